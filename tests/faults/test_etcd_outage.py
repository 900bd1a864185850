"""etcd stopped in the middle of a change set: nothing partial is visible, and once etcd is back the
activity's retry applies the change set exactly once.

Each test has its own etcd (SIGKILLed and started again on its data dir) and, for the rollbacks, a
simulator following it and a worker with every real activity on the package's Temporal dev server.
The rollback's etcd client dies at the one moment that matters, around the transaction of the
rollback's change set (`Breaker`): before it is sent, or after etcd committed it and before the
answer arrives (the answer is lost: the activity cannot know it succeeded). Then the store is read
while etcd is back and the activity's next retry is held (`GatedStore`): all or nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

from contracts.changes import ChangeSetRequest, SwitchChange
from activities.switch_store import SwitchStore
from contracts.roles import Role
from manual.rollback import Durations, Scope, Severity
from core import procs
from core.etcd import Etcd, EtcdError, EtcdUnavailable, Put
from core.settings import PagingSettings, TradingCoreSettings
from tests.support.infra import EtcdNode
from tests.support.waits import wait_until
from tests.support.store_helpers import check_store, dump
from tests.support.fixtures_sim import LEVEL_HOOKS, LEVEL_KEYS, start_sim
from tests.support.wf_helpers import incident, poll_progress
from worker import activity_methods, activity_objects, build_worker
from contracts.progress import Decision
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

pytestmark = pytest.mark.timeout(240)

QUICK = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250),
                  restore_observe=timedelta(seconds=1), confirm_sla=timedelta(minutes=10))
OPERATORS = {"rita": Role.RISK_MANAGER, "oscar": Role.ON_CALL, "sam": Role.SUPER_ADMIN}


class Breaker(Etcd):
    """The worker's etcd client: SIGKILLs etcd around the transaction of the change set `target`."""

    def __init__(self, node: EtcdNode, when: str):
        super().__init__([node.endpoint], timeout=2.0, connect_timeout=1.0)
        self.node, self.when = node, when
        self.target: str | None = None
        self.killed_at: float | None = None

    async def txn(self, compare, success, failure=()):
        ours = self.target and any(isinstance(o, Put) and o.key.endswith(f"/changes/{self.target}") for o in success)
        if not ours or self.killed_at is not None:
            return await super().txn(compare, success, failure)
        if self.when == "before":
            self.killed_at = self.node.kill()
            return await super().txn(compare, success, failure)  # a dead etcd: EtcdUnavailable, for real
        await super().txn(compare, success, failure)
        self.killed_at = self.node.kill()
        raise EtcdUnavailable(f"{self.endpoint}: connection lost before the answer (etcd killed after the commit)")


class GatedStore(SwitchStore):
    """Counts apply attempts per change id; while `gate` is clear, an attempt waits before it starts."""

    def __init__(self, etcd: Etcd, prefix: str):
        super().__init__(etcd, prefix)
        self.calls: Counter[str] = Counter()
        self.failures: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def apply(self, req: ChangeSetRequest):
        self.calls[req.change_id] += 1
        if not self.gate.is_set():
            self.waiting += 1
            await self.gate.wait()
        try:
            return await super().apply(req)
        except Exception as e:
            self.failures.append(f"{type(e).__name__}: {e}")
            raise


@pytest.fixture
def own_etcd(tmp_path):
    node = EtcdNode(tmp_path / "etcd").start()
    yield node
    node.stop()


@pytest.fixture
def own_sim(own_etcd, prefix):
    srv = start_sim(own_etcd.endpoint, prefix)
    yield srv
    procs.stop(srv.proc.pid)
    srv.proc.wait(timeout=10)


async def setup_store(store: SwitchStore) -> None:
    await store.init(super_admin="alice", actor="alice")
    for name, role in OPERATORS.items():
        await store.add_operator(name, role, actor="alice")


def change(actor: str, reason: str = "test", change_id: str | None = None, **values) -> ChangeSetRequest:
    return ChangeSetRequest(change_id=change_id or f"t-{uuid.uuid4().hex[:12]}", actor=actor, reason=reason,
                            changes=[SwitchChange(switch=k, value=v) for k, v in values.items()])


@pytest.mark.parametrize("when", ["before_the_commit", "after_the_commit"])
async def test_etcd_killed_around_a_rollbacks_change_set(when, tclient, own_etcd, own_sim, prefix, task_queue):
    before_commit = when == "before_the_commit"
    etcd = Breaker(own_etcd, "before" if before_commit else "after")
    store = GatedStore(etcd, prefix)
    view = Etcd([own_etcd.endpoint], timeout=2.0)  # the test's own eyes on etcd
    await setup_store(store)
    pre = {"global_betting_enabled": True, "routing_mode": "NORMAL_MODE"}
    await store.apply(change("alice", **pre))
    base = await dump(view, prefix)
    inc = incident()
    wid = rollback_workflow_id(inc)
    target = etcd.target = f"{wid}:apply"
    core = TradingCoreSettings(url=own_sim.url, token=SecretStr(own_sim.token), timeout_s=2.0)
    paging = PagingSettings(pagerduty_url=SecretStr(f"{own_sim.url}/sim/pagerduty"),
                            pagerduty_routing_keys=SecretStr(",".join(LEVEL_KEYS)),
                            slack_webhook_urls=SecretStr(",".join(f"{own_sim.url}/sim/slack/{h}" for h in LEVEL_HOOKS)))
    try:
        async with httpx.AsyncClient() as http:
            objs = activity_objects(store, http, tclient, core, paging)
            async with build_worker(tclient, task_queue, activity_methods(objs)):
                h = await tclient.start_workflow(
                    RollbackWorkflow.run,
                    RollbackInput(incident_id=inc, summary="internal fills failing", severity=Severity.CRITICAL,
                                  scope=Scope.CROSS, requested_by="oscar", reason="error rate 3%", durations=QUICK),
                    id=wid, task_queue=task_queue)
                await wait_until(lambda: etcd.killed_at, 30, "etcd killed around the change set")
                # the activity retries while etcd is down (Temporal's retry policy), each attempt refused
                await wait_until(lambda: store.calls[target] >= 4, 30, "three retries while etcd is down")
                store.gate.clear()
                await wait_until(lambda: store.waiting >= 1, 30, "the next retry waiting")
                down_s = time.time() - etcd.killed_at
                failed = store.calls[target] - 1
                await asyncio.to_thread(own_etcd.start)
                back = time.monotonic()

                # etcd is back, the retry has not run yet: all or nothing, and the invariants hold
                st = await check_store(view, prefix)
                landed = [r for r in st["records"] if r.get("change_id") == target]
                if before_commit:
                    assert landed == [] and await dump(view, prefix) == base, "a partial change set is visible"
                else:
                    assert len(landed) == 1 and landed[0]["changes"] == [
                        {"switch": "routing_mode", "old": "NORMAL_MODE", "new": "HL_MODE"},
                        {"switch": "global_betting_enabled", "old": True, "new": False}]
                    assert {k: st["values"][k] for k in pre} == {"routing_mode": "HL_MODE",
                                                                 "global_betting_enabled": False}
                store.gate.set()
                p = await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm", 30)
                after_s = time.monotonic() - back
                res = p.applied[0]
                assert res.change_id == target and res.replayed is (not before_commit)
                assert "trading core applied revision" in next(s for s in p.history if s.name == "apply").detail
                await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
                await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "fix")
                await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="r1", tests_passed=True))
                assert (await h.result()).status == "restored"
        st = await check_store(view, prefix)
        assert Counter(r.get("change_id") for r in st["records"] if r.get("source") == wid) == {
            target: 1, f"{wid}:restore_5pct": 1, f"{wid}:restore_full": 1}
        assert {k: st["values"][k] for k in pre} == pre
        print(f"\netcd killed {when.replace('_', ' ')}: down {down_s:.1f} s, {failed} attempts refused meanwhile "
              f"({store.failures[0][:90]}...), applied {after_s:.2f} s after etcd was back"
              f"{' (replayed: the commit had landed)' if not before_commit else ''}")
    finally:
        await view.close()
        await etcd.close()


async def test_change_sets_through_repeated_etcd_kills_land_exactly_once(own_etcd, prefix):
    """Three writers on the same switches; etcd SIGKILLed three times at points set by their
    progress; each change set retried on any etcd error under its change id (as an activity is)."""
    rng = random.Random(8)
    view = Etcd([own_etcd.endpoint], timeout=2.0)
    clients = [Etcd([own_etcd.endpoint], timeout=1.0, connect_timeout=0.5) for _ in range(3)]
    await setup_store(SwitchStore(view, prefix))
    done = 0
    replayed = retried = 0
    per_writer = 12

    async def writer(i: int) -> None:
        nonlocal done, replayed, retried
        store = SwitchStore(clients[i], prefix)
        for n in range(per_writer):
            req = change("rita", change_id=f"w{i}-{n}", hedge_max_leverage=round(1 + i + n / 100, 2),
                         liquidation_check_interval_ms=1000 + 100 * i + n)
            attempt = 0
            while True:
                attempt += 1
                try:
                    res = await store.apply(req)
                    break
                except (EtcdUnavailable, EtcdError):
                    await asyncio.sleep(0.05 * min(attempt, 10))  # the retry policy's backoff
            replayed += res.replayed
            retried += attempt > 1
            done += 1

    async def killer() -> list[float]:
        downs = []
        for at in (6, 16, 26):
            await wait_until(lambda: done >= at, 60, f"{at} change sets done", every=0.001 + rng.random() * 0.004)
            t = time.time()
            own_etcd.kill()
            await asyncio.to_thread(own_etcd.start)
            downs.append(time.time() - t)
        return downs

    try:
        downs, *_ = await asyncio.gather(killer(), *(writer(i) for i in range(3)))
        st = await check_store(view, prefix)
        ids = Counter(r.get("change_id") for r in st["records"])
        off = {f"w{i}-{n}": ids[f"w{i}-{n}"] for i in range(3) for n in range(per_writer) if ids[f"w{i}-{n}"] != 1}
        assert not off, f"change sets not audited exactly once: {off} (etcd down {downs})"
        print(f"\n{3 * per_writer} change sets, etcd SIGKILLed 3 times (down {', '.join(f'{d:.1f}' for d in downs)} s): "
              f"{retried} retried, {replayed} of them had committed before the answer was lost; each audited once")
    finally:
        for c in [view, *clients]:
            await c.close()
