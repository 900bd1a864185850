"""Two writers on the same switch at once: the `rollbackctl switch set` CLI (a subprocess) against a
rollback. No update is lost: the loser of a compare-and-swap re-reads and retries on fresh state
(audited with `attempts`), or, when it asked for a value (`--expect`, a restore), gets a conflict
that names who set what; the audit shows both, in the order they happened, each record's `old`
being the previous record's `new`.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import timedelta

import httpx
import pytest

from activities.switch_store import SwitchStore
from manual.rollback import Durations, Scope, Severity
from core.etcd import Etcd
from tests.support.infra import Cli, cli
from tests.support.store_helpers import check_store, dump
from tests.support.fixtures_sim import apply_and_wait
from tests.support.wf_helpers import incident, poll_progress
from worker import activity_methods, activity_objects, build_worker
from contracts.progress import Decision
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

pytestmark = pytest.mark.timeout(180)

QUICK = Durations(observe=timedelta(milliseconds=500), check_interval=timedelta(milliseconds=250),
                  restore_observe=timedelta(milliseconds=500), confirm_sla=timedelta(minutes=10))


@pytest.fixture
def cli_env(etcd_server, prefix) -> dict[str, str]:
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "ROLLBACKCTL_SIGNING": "off"}


class CutIn(Etcd):
    """The worker's etcd client: right before the transaction of change set `target`, after the
    store read what it is about to replace, `cut_in()` runs (a CLI write to the same switch)."""

    def __init__(self, endpoint: str):
        super().__init__([endpoint], timeout=5.0)
        self.target: str | None = None
        self.cut_in = None
        self.fired = False

    async def txn(self, compare, success, failure=()):
        if (self.target and not self.fired and self.cut_in is not None
                and any(getattr(o, "key", "").endswith(f"/changes/{self.target}") for o in success)):
            self.fired = True
            await self.cut_in()
        return await super().txn(compare, success, failure)


def chain_per_switch(records: list[dict]) -> dict[str, list[tuple]]:
    """Per switch, (actor, old, new) in commit order; asserts each old is the previous new."""
    out: dict[str, list[tuple]] = defaultdict(list)
    for r in records:
        for c in r["changes"]:
            hist = out[c["switch"]]
            if hist:
                assert c["old"] == hist[-1][2], f"{c['switch']}: record {r['id']} replaced {c['old']!r}, " \
                                                f"but {hist[-1][2]!r} was in force: an update was lost"
            hist.append((r["actor"], c["old"], c["new"]))
    return out


async def test_rollback_loses_a_race_to_the_cli_and_retries_on_fresh_state(tclient, etcd_server, etcd, store, sim,
                                                                           core_settings, paging_settings, cli_env,
                                                                           prefix, task_queue):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    inc = incident()
    wid = rollback_workflow_id(inc)
    wetcd = CutIn(etcd_server.endpoint)
    wetcd.target = f"{wid}:apply"
    cli_result: list[Cli] = []

    async def cut_in() -> None:  # rita switches the mode while the rollback is about to write it
        cli_result.append(await cli(cli_env, "switch", "set", "routing_mode", "BETTING_MODE", "--as", "rita",
                                    "--reason", "busy market: betting mode", "--yes"))

    wetcd.cut_in = cut_in
    async with httpx.AsyncClient() as http:
        objs = activity_objects(SwitchStore(wetcd, prefix), http, tclient, core_settings, paging_settings)
        try:
            async with build_worker(tclient, task_queue, activity_methods(objs)):
                h = await tclient.start_workflow(
                    RollbackWorkflow.run,
                    RollbackInput(incident_id=inc, summary="fills failing", severity=Severity.CRITICAL,
                                  scope=Scope.CROSS, requested_by="oscar", reason="error rate", durations=QUICK),
                    id=wid, task_queue=task_queue)
                p = await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm", 30)
        finally:
            await wetcd.close()
    (c,) = cli_result
    assert c.code == 0, c.err
    assert "routing_mode: NORMAL_MODE -> BETTING_MODE" in c.out
    st = await check_store(etcd, prefix)
    rec = next(r for r in st["records"] if r.get("change_id") == f"{wid}:apply")
    cli_rec = next(r for r in st["records"] if r["source"] == "cli" and r["reason"] == "busy market: betting mode")
    assert int(cli_rec["id"]) < int(rec["id"]), "the audit shows the CLI's change first, as it happened"
    assert rec["attempts"] == 2, "the rollback lost the compare-and-swap once, re-read and retried"
    assert {c["switch"]: c["old"] for c in rec["changes"]}["routing_mode"] == "BETTING_MODE", \
        "the rollback replaced what rita had set (fresh state), not the value it first read"
    chain = chain_per_switch(st["records"])["routing_mode"]
    assert chain[-2:] == [("rita", "NORMAL_MODE", "BETTING_MODE"), ("oscar", "BETTING_MODE", "HL_MODE")]
    assert st["values"]["routing_mode"] == "HL_MODE"
    await h.terminate("test over")
    print(f"\nrollback vs CLI on routing_mode: CLI first (audit {cli_rec['id']}), the rollback re-read and "
          f"retried (audit {rec['id']}, attempts {rec['attempts']}); {p.applied[0].changes}")


async def test_cli_with_a_stale_expect_and_a_blocked_restore_get_clear_conflicts(tclient, etcd, store, sim, workers,
                                                                                cli_env, prefix, task_queue):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    w = workers.start("a")
    await workers.wait_polling(tclient, task_queue, w)
    inc = incident()
    wid = rollback_workflow_id(inc)
    h = await tclient.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="fills failing", severity=Severity.CRITICAL, scope=Scope.CROSS,
                      requested_by="oscar", reason="error rate", durations=QUICK),
        id=wid, task_queue=task_queue)
    await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm", 30)

    # rita still believes NORMAL_MODE is in force: compare-and-swap refuses, naming who set what
    before = await dump(etcd, prefix)
    # (--yes: she knows the rollback holds routing_mode; without it the CLI asks first, tests/test_cli_guard.py)
    stale = await cli(cli_env, "switch", "set", "routing_mode", "BETTING_MODE", "--expect", "NORMAL_MODE", "--as",
                      "rita", "--reason", "stale view", "--yes")
    assert stale.code == 4, (stale.code, stale.err)
    error = stale.err.strip().splitlines()[-1]  # (above it, with signing off: the drill-mode warning)
    assert error.startswith("rollbackctl: error: routing_mode is HL_MODE (set by oscar at ") and \
           error.endswith("not NORMAL_MODE as expected: not overwritten"), stale.err
    assert await dump(etcd, prefix) == before, "a refused compare-and-swap changed etcd"

    # ... then she sets it without --expect (her call); the rollback's restore must not overwrite it
    r = await cli(cli_env, "switch", "set", "routing_mode", "BETTING_MODE", "--as", "rita", "--reason", "manual mode",
                  "--json", "--yes")
    assert r.code == 0, r.err
    assert json.loads(r.out)["changes"] == [{"switch": "routing_mode", "old": "HL_MODE", "new": "BETTING_MODE"}]
    await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
    await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "fix")
    await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="r4", tests_passed=True))
    res = await h.result()
    assert res.status == "restore_blocked", res
    assert "routing_mode is BETTING_MODE (set by rita at " in res.detail and "not overwritten" in res.detail, res.detail
    st = await check_store(etcd, prefix)
    assert st["values"]["routing_mode"] == "BETTING_MODE"
    assert not any((r.get("change_id") or "").startswith(f"{wid}:restore") for r in st["records"]), \
        "a blocked restore wrote nothing (not even its other switch)"
    chain = chain_per_switch(st["records"])["routing_mode"]
    assert chain[-2:] == [("oscar", "NORMAL_MODE", "HL_MODE"), ("rita", "HL_MODE", "BETTING_MODE")]
    pages = [pg for pg in await sim.pages() if pg.get("dedup_key", "").startswith(wid)]
    assert any("restore" in pg["payload"]["summary"] or "stopped" in pg["payload"]["summary"] for pg in pages[-2:])
    print(f"\nstale --expect: exit {stale.code}: {error}\nrestore: {res.status}: {res.detail}")


async def test_cli_writers_racing_a_rollback_lose_nothing(tclient, etcd, store, sim, workers, cli_env, prefix,
                                                          task_queue):
    """Five `switch set` subprocesses on routing_mode at the moment a rollback flips it: no hooks."""
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    w = workers.start("a")
    await workers.wait_polling(tclient, task_queue, w)
    inc = incident()
    wid = rollback_workflow_id(inc)
    modes = ["BETTING_MODE", "NORMAL_MODE", "BETTING_MODE", "NORMAL_MODE", "BETTING_MODE"]
    clis = [cli(cli_env, "switch", "set", "routing_mode", m, "--as", "rita", "--reason", f"racer {i}", "--yes")
            for i, m in enumerate(modes)]
    start = tclient.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="fills failing", severity=Severity.CRITICAL, scope=Scope.CROSS,
                      requested_by="oscar", reason="error rate", durations=QUICK),
        id=wid, task_queue=task_queue)
    h, *results = await asyncio.gather(start, *clis)
    assert all(r.code == 0 for r in results), [r.err for r in results]
    await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm", 30)
    await h.terminate("test over")
    st = await check_store(etcd, prefix)
    chain = chain_per_switch(st["records"])["routing_mode"]  # asserts nothing was lost
    racers = [r for r in st["records"] if r["reason"].startswith("racer ")]
    assert len(racers) == 5 and len([r for r in st["records"] if r.get("change_id") == f"{wid}:apply"]) == 1
    attempts = sorted(r.get("attempts", 1) for r in st["records"] if r in racers or r.get("change_id") == f"{wid}:apply")
    print(f"\n5 CLI writers + a rollback on routing_mode: 6 records, CAS attempts {attempts}, final "
          f"{st['values']['routing_mode']} by {chain[-1][0]}")
