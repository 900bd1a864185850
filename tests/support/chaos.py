"""A seeded fault campaign against a stack of our own (`make chaos`; CI runs one short seed).

An operator workload goes through the CLI as people run it (signing on, the production shape): switch
sets with and without `--expect`, a two-person change and its second approval, single-module
rollbacks and Level 1 degradations answered step by step by the least-privileged operator the step
allows (read from `status --json`), a Phase 2 canary paused / resumed / extended / aborted, a P0 fault
at the simulator acknowledged and resolved, while a nemesis SIGKILLs one server process at a time (the worker,
etcd, the Temporal server, the trading-core simulator, the P0 monitor), keeps it down for a random
1..max seconds and starts it again. Then every server is up, every workflow still waiting is answered
to its end, and the invariants are checked from etcd, the audit chain and Temporal:

1. `audit verify` passes;
2. every switch equals the `new` value of its last audit record (no lost or unaudited write);
3. every change a command reported as applied (exit 0) is audited exactly once, an unconfirmed one
   (exit 9) once if its request ended `applied` and never otherwise, and no other request is audited
   (a refusal or an error exit never lands);
4. no workflow FAILED or timed out, none ended with its own result `failed`, none still running;
5. no command printed a traceback; every `--json` success printed exactly one JSON document; every
   exit code is a documented one;
6. never two canaries of one phase running at once.

The seed is printed first; the same seed replays the same workload and the same nemesis schedule (the
timing of the processes themselves is not seeded). A seed that failed is kept in
tests/faults/test_chaos.py as a regression case.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import procs
from tests.support.infra import EtcdNode, TemporalServer, WorkerProc, Workers, connect
from tests.support.fixtures_sim import LEVEL_HOOKS, LEVEL_KEYS, SIM_TOKEN
from tests.support.store_helpers import CliResult, run_cli

DOCUMENTED_EXITS = {0, 2, 3, 4, 5, 6, 9}
OPERATORS = {"rita": "risk_manager", "oscar": "on_call", "sam": "super_admin"}  # alice: the first super admin
BY_ROLE = {"on_call": "oscar", "risk_manager": "rita", "super_admin": "alice"}
# risk-manager switches and values the workload moves between (all inside their bounds)
VALUES: dict[str, list[Any]] = {"hedge_max_leverage": ["1.5", "2", "2.5", "3"],
                                "liquidation_check_interval_ms": ["500", "1000", "2000"],
                                "force_hl_volatility_pct": ["5", "7", "10"]}
QUICK = ["--observe", "1s", "--interval", "500ms"]


@dataclass
class Ran(CliResult):
    """One CLI command (tests/store_helpers.run_cli's result) and the arguments it ran with."""

    args: list[str] = field(default_factory=list)

    @property
    def wants_json(self) -> bool:
        return "--json" in self.args

    @property
    def line(self) -> str:
        return f"rollbackctl {' '.join(self.args)} -> {self.code}"


@dataclass
class Campaign:
    seed: int
    steps: int
    root: Path
    max_down_s: float = 10.0
    log: list[str] = field(default_factory=list)
    ran: list[Ran] = field(default_factory=list)
    applied: set[str] = field(default_factory=set)  # change-<nonce> reported applied (exit 0)
    unconfirmed: set[str] = field(default_factory=set)  # change-<nonce> reported exit 9
    workflows: set[str] = field(default_factory=set)  # rollbacks and degradations started
    pending: set[str] = field(default_factory=set)  # two-person requests (exit 6): confirmed or left to expire
    canaries: set[str] = field(default_factory=set)  # Phase 2 canaries started
    incidents: set[str] = field(default_factory=set)  # P0 incidents the workload opened at the simulator
    overlaps: list[str] = field(default_factory=list)  # two canaries of one phase running at once
    strikes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nemesis_rng = random.Random(self.seed * 7919 + 1)
        self.task_queue = f"chaos-{self.seed}"
        self.prefix = f"/chaos-{self.seed}/"

    # -- the stack -----------------------------------------------------------------------------------
    def start_stack(self) -> None:
        self.etcd = EtcdNode(self.root / "etcd").start()
        self.temporal = TemporalServer(self.root / "temporal").start()
        self.sim_port = procs.free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.env = {
            "ROLLBACKCTL_ETCD_ENDPOINTS": self.etcd.endpoint, "ROLLBACKCTL_ETCD_PREFIX": self.prefix,
            "ROLLBACKCTL_ETCD_CONNECT_TIMEOUT_S": "2",
            "TEMPORAL_ADDRESS": self.temporal.address, "TEMPORAL_NAMESPACE": "default",
            "ROLLBACKCTL_TASK_QUEUE": self.task_queue, "ROLLBACKCTL_KEY_DIR": str(self.root / "keys"),
            "ROLLBACKCTL_TRADING_CORE_URL": self.sim_url, "ROLLBACKCTL_TRADING_CORE_TOKEN": SIM_TOKEN,
            "ROLLBACKCTL_PAGERDUTY_URL": f"{self.sim_url}/sim/pagerduty/v2/enqueue",
            "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": ",".join(LEVEL_KEYS),
            "ROLLBACKCTL_SLACK_WEBHOOK_URLS": ",".join(f"{self.sim_url}/sim/slack/{h}" for h in LEVEL_HOOKS),
            "ROLLBACKCTL_SIM_PAGERDUTY_KEYS": ",".join(LEVEL_KEYS),
            "ROLLBACKCTL_LOG_FORMAT": "json", "ROLLBACKCTL_LOG_LEVEL": "WARNING",
            "ROLLBACKCTL_CHANGE_WAIT_S": "8", "ROLLBACKCTL_APPROVAL_TIMEOUT_S": "30",
        }
        self.ws = Workers(self.root / "procs", self.env)
        self.procs: dict[str, WorkerProc | None] = {}
        for name in ("sim", "worker", "monitor"):
            self._start(name)

    def _start(self, name: str) -> None:
        if name == "etcd":
            self.etcd.start()
        elif name == "temporal":
            self.temporal.start()
        elif name == "sim":
            self.procs["sim"] = self.ws.run("sim", [sys.executable, "-m", "simulator"],
                                            ROLLBACKCTL_LOG_LEVEL="WARNING")
        elif name == "worker":
            self.procs["worker"] = self.ws.start("worker")
        elif name == "monitor":
            self.procs["monitor"] = self.ws.monitor("monitor")

    def _kill(self, name: str) -> None:
        if name == "etcd":
            self.etcd.kill()
        elif name == "temporal":
            self.temporal.kill()
        else:
            p = self.procs.get(name)
            if p is not None and p.alive():
                p.sigkill()

    def close(self) -> None:
        self.ws.close()
        self.temporal.stop()
        self.etcd.stop()

    # -- the CLI -------------------------------------------------------------------------------------
    async def cli(self, *args: str, timeout: float = 120) -> Ran:
        done = await asyncio.to_thread(run_cli, *args, env=self.env, timeout=timeout)
        r = Ran(done.code, done.out, done.err, done.seconds, args=list(args))
        self.ran.append(r)
        self.log.append(f"{time.strftime('%H:%M:%S')} {r.line} ({r.seconds:.1f}s)"
                        + (f": {r.err.strip().splitlines()[-1][:160]}" if r.code and r.err.strip() else ""))
        return r

    async def setup_operators(self) -> None:
        r = await self.cli("init", "--super-admin", "alice", "--generate-key")
        assert r.code == 0, r.err
        for name, role in OPERATORS.items():
            r = await self.cli("operator", "add", name, role, "--as", "alice", "--generate-key")
            assert r.code == 0, r.err

    def _record_change(self, r: Ran) -> None:
        if r.code == 0 and r.wants_json:
            wid = json.loads(r.out).get("workflow_id")
            if wid and wid.startswith("change-"):
                self.applied.add(wid)
        m = re.search(r"submitted as (change-[A-Za-z0-9_-]+);", r.err)
        if r.code == 9 and m:
            self.unconfirmed.add(m.group(1))

    # -- the workload ----------------------------------------------------------------------------------
    async def op_switch_set(self) -> None:
        name = self.rng.choice(sorted(VALUES))
        value = self.rng.choice(VALUES[name])
        args = ["switch", "set", name, value, "--as", "rita", "--reason", f"chaos {self.seed}", "--json"]
        if self.rng.random() < 0.4:
            args += ["--expect", self.rng.choice(VALUES[name])]  # right or wrong: a conflict is a refusal
        self._record_change(await self.cli(*args))

    async def op_two_person(self) -> None:
        value = self.rng.choice(["true", "false"])
        r = await self.cli("switch", "set", "global_betting_enabled", value, "--as", "alice", "--reason", "chaos",
                           "--json")
        self._record_change(r)  # exit 0: false -> false or back to false needs one person
        if r.code == 6:
            wid = json.loads(r.out)["workflow_id"]
            self.pending.add(wid)
            if self.rng.random() < 0.8:  # else left to expire (nothing applied)
                await self.cli("confirm", wid, "--as", "sam", "--reason", "agreed")

    async def op_rollback(self) -> None:
        inc = f"CH{self.seed}-{len(self.workflows)}"
        r = await self.cli("rollback", "start", "--severity", "critical_path_failure", "--scope", "single_module",
                           "--switch", self.rng.choice(["hedging", "auto_mode"]), "--incident", inc, "--as", "oscar",
                           "--reason", "chaos", *QUICK, "--restore-observe", "1s")
        if r.code == 0:
            self.workflows.add(f"rollback-{inc}")
            await self.drive(f"rollback-{inc}", budget_s=40)

    async def op_degrade(self) -> None:
        inc = f"CD{self.seed}-{len(self.workflows)}"
        r = await self.cli("degrade", "1", "--incident", inc, "--as", "oscar", "--reason", "chaos", *QUICK)
        if r.code == 0:
            self.workflows.add(f"degrade-1-{inc}")
            await self.drive(f"degrade-1-{inc}", budget_s=40)

    async def op_canary(self) -> None:
        """A Phase 2 canary (7 days at --time-scale 2000: 5 min), paused / resumed / extended / aborted."""
        r = await self.cli("canary", "start", "phase2", "--as", "rita", "--reason", "chaos", "--time-scale", "2000")
        m = re.search(r"canary-phase2-\d+", r.out)
        if r.code != 0 or not m:
            return
        wid = m.group(0)
        self.canaries.add(wid)
        await self._one_canary_per_phase("phase2")
        moves = [("pause", "oscar", ["--reason", "watch it"]), ("resume", "rita", ["--reason", "fine"]),
                 ("extend", "oscar", ["--by", "1h"])]
        for kind, who, extra in self.rng.sample(moves, k=2):
            await self.cli("canary", kind, wid, "--as", who, *extra)
        if self.rng.random() < 0.5:
            await self.cli("canary", "abort", wid, "--as", "rita", "--reason", "chaos")

    async def _faults(self, method: str, body: dict | None = None) -> bool:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=3) as h:
                r = await h.request(method, f"{self.sim_url}/sim/faults", json=body)
                return r.status_code < 300
        except httpx.HTTPError:  # the simulator is down right now
            return False

    async def _open_incident(self, rule: str) -> str | None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            r = await self.cli("incidents", "--json")
            if r.code == 0:
                rows = [x for x in json.loads(r.out) if x.get("rule") == rule and x.get("status") in ("open", "acknowledged")]
                if rows:
                    return rows[0]["workflow_id"]
            await asyncio.sleep(0.5)  # the monitor polls the simulator (bounded)
        return None

    async def op_p0(self) -> None:
        """A P0 at the simulator (hot wallet under $100K): the monitor opens it; acknowledged, cleared, resolved."""
        if not await self._faults("POST", {"hot_wallet_usd": 40_000.0}):
            return
        wid = await self._open_incident("hot_wallet")
        await self._faults("DELETE")
        if wid is None:
            return
        self.incidents.add(wid)
        await self.cli("ack", wid, "--as", "oscar")
        await self.resolve_incident(wid, budget_s=30)

    async def resolve_incident(self, wid: str, budget_s: float) -> bool:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            r = await self.cli("status", wid, "--json", timeout=60)
            if r.code == 0 and json.loads(r.out).get("temporal_status") not in (None, "running"):
                return True
            r = await self.cli("resolve", wid, "--as", "oscar", "--reason", "chaos: refilled")
            if r.code == 0:
                return True
            await asyncio.sleep(1)  # the condition must read clear first (bounded)
        return False

    async def _one_canary_per_phase(self, phase: str) -> None:
        try:
            client = await connect(self.temporal.address)
            running = [wf.id async for wf in client.list_workflows(
                "WorkflowType = 'CanaryWorkflow' AND ExecutionStatus = 'Running'") if wf.id.startswith(f"canary-{phase}-")]
        except Exception:  # Temporal down right now: the end phase checks again
            return
        if len(running) > 1:
            self.overlaps.append(f"{phase}: {sorted(running)} running at once")

    async def drive(self, wid: str, budget_s: float) -> bool:
        """Answer each step `wid` waits for with the least-privileged operator allowed, within `budget_s`
        (bounded: an outage may outlast it; the end phase drives what is left). True when it ended."""
        deadline = time.monotonic() + budget_s
        answered: set[tuple[str, str]] = set()
        while time.monotonic() < deadline:
            r = await self.cli("status", wid, "--json", timeout=60)
            if r.code != 0:
                await asyncio.sleep(0.5)  # the stack is partly down: ask again (bounded by the budget)
                continue
            view = json.loads(r.out)
            if view.get("temporal_status") not in (None, "running"):
                return True
            aw = view.get("awaiting")
            if aw is None:
                await asyncio.sleep(0.3)  # between steps: the workflow is working (polled, bounded)
                continue
            who = BY_ROLE[aw["min_role"]]
            if aw.get("approved_by") and who in aw["approved_by"]:
                who = "sam"  # the two-person rule: a second super admin
            key = (aw["step"], who)
            if key in answered and aw["expects"] != "fix":
                await asyncio.sleep(0.3)
                continue
            answered.add(key)
            if aw["expects"] == "confirm":
                await self.cli("confirm", wid, "--as", who)
            elif aw["expects"] == "fix":
                await self.cli("fix", wid, "--as", who, "--reference", "chaos", "--tests-passed")
            else:  # a step this workload does not expect (escalation): cancel it the documented way
                await self.cli("cancel", wid, "--as", who, "--reason", f"chaos: unexpected step {aw['step']}")
        return False

    # -- the nemesis -----------------------------------------------------------------------------------
    async def nemesis(self, stop: asyncio.Event) -> None:
        victims = ["worker", "etcd", "temporal", "sim", "monitor"]
        while not stop.is_set():
            pause = self.nemesis_rng.uniform(2, 8)
            victim = self.nemesis_rng.choice(victims)
            down = self.nemesis_rng.uniform(1, self.max_down_s)
            try:
                await asyncio.wait_for(stop.wait(), pause)
                return
            except asyncio.TimeoutError:
                pass
            t = time.strftime("%H:%M:%S")
            await asyncio.to_thread(self._kill, victim)
            try:  # the outage's length is the fault itself, not a synchronisation
                await asyncio.wait_for(stop.wait(), down)
            except asyncio.TimeoutError:
                pass
            await asyncio.to_thread(self._start, victim)
            self.strikes.append(f"{t} SIGKILL {victim}, down {down:.1f}s")
            self.log.append(f"{t} nemesis: SIGKILL {victim}, down {down:.1f}s")

    async def run(self) -> None:
        print(f"\nchaos campaign: seed {self.seed}, {self.steps} operations, outages 1-{self.max_down_s:g} s "
              f"(CHAOS_SEED={self.seed} make chaos replays it)", flush=True)
        await self.setup_operators()
        stop = asyncio.Event()
        nem = asyncio.create_task(self.nemesis(stop))
        ops = ([self.op_switch_set] * 5 + [self.op_two_person] + [self.op_rollback] * 2 + [self.op_degrade] * 2
               + [self.op_canary, self.op_p0])
        try:
            for _ in range(self.steps):
                await self.rng.choice(ops)()
        finally:
            stop.set()
            await nem
        await self.settle()

    async def settle(self) -> None:
        """Everything up; every workflow driven to its end (bounded)."""
        for name in ("etcd", "temporal"):
            if (self.etcd.proc if name == "etcd" else self.temporal.proc) is None:
                await asyncio.to_thread(self._start, name)
        for name in ("sim", "worker", "monitor"):
            p = self.procs.get(name)
            if p is None or not p.alive():
                await asyncio.to_thread(self._start, name)
        client = await connect(self.temporal.address)
        for wid in sorted(self.workflows):
            if not await self.drive(wid, budget_s=120):
                raise AssertionError(f"{wid} did not end within 120 s of the stack being whole")
            await asyncio.wait_for(client.get_workflow_handle(wid).result(), 60)
        for wid in sorted(self.unconfirmed | self.pending):  # each ends: applied, refused or expired
            await asyncio.wait_for(client.get_workflow_handle(wid).result(), 180)
        await self._faults("DELETE")
        for wid in sorted(self.incidents):
            if not await self.resolve_incident(wid, budget_s=120):
                raise AssertionError(f"{wid} could not be resolved within 120 s of the stack being whole")
            await asyncio.wait_for(client.get_workflow_handle(wid).result(), 120)
        await self._one_canary_per_phase("phase2")
        for wid in sorted(self.canaries):  # a canary still running is aborted (its rollback restores its switches)
            for _ in range(20):
                desc = await client.get_workflow_handle(wid).describe()
                if desc.status.name != "RUNNING":
                    break
                r = await self.cli("canary", "abort", wid, "--as", "rita", "--reason", "chaos: end of campaign")
                if r.code == 0:
                    break
                await asyncio.sleep(1)  # the stack settles (bounded)
            await asyncio.wait_for(client.get_workflow_handle(wid).result(), 180)

    # -- the invariants --------------------------------------------------------------------------------
    async def check(self) -> dict[str, Any]:
        from activities.switch_store import SwitchStore
        from core.etcd import Etcd
        from temporalio.client import WorkflowExecutionStatus

        problems: list[str] = []
        r = await self.cli("audit", "verify")
        if r.code != 0:
            problems.append(f"audit verify: {r.err.strip()[-300:]}")
        async with Etcd([self.etcd.endpoint]) as etcd:
            store = SwitchStore(etcd, self.prefix)
            snap = await store.snapshot()
            audit = await store.audit()
        last: dict[str, Any] = {}
        for rec in audit:
            for c in rec.changes:
                last[c.switch] = c.new
        for name, want in last.items():
            if snap.switches[name].value != want:
                problems.append(f"{name} is {snap.switches[name].value!r}, its last audit record says {want!r}")
        client = await connect(self.temporal.address)
        outcome = {}
        for wid in sorted(self.unconfirmed | self.pending):
            res = await client.get_workflow_handle(wid).result()
            outcome[wid] = res["status"]
        landed = set(self.applied) | {w for w, st in outcome.items() if st == "applied"}
        counts: dict[str, int] = {}
        for rec in audit:
            if rec.change_id and rec.change_id.startswith("req-"):
                counts[rec.change_id] = counts.get(rec.change_id, 0) + 1
        for wid in landed:
            n = counts.get("req-" + wid.removeprefix("change-"), 0)
            if wid in self.applied and n != 1:
                problems.append(f"{wid} was reported applied and is audited {n} times")
        allowed = {"req-" + w.removeprefix("change-") for w in landed}
        for cid, n in counts.items():
            if cid not in allowed and not self._operator_setup(cid, audit):
                problems.append(f"{cid} is audited ({n}x) but no command reported it applied")
        failed = []
        async for wf in client.list_workflows(f"TaskQueue = '{self.task_queue}'"):
            if wf.status in (WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TIMED_OUT):
                failed.append(f"{wf.id} {wf.status.name}")
            elif wf.status == WorkflowExecutionStatus.RUNNING and not wf.id.startswith(("pager-", "monitor", "change-events")):
                failed.append(f"{wf.id} still RUNNING")
            elif wf.status == WorkflowExecutionStatus.COMPLETED and wf.workflow_type in (
                    "RollbackWorkflow", "DegradationWorkflow", "ChangeRequestWorkflow", "CanaryWorkflow"):
                res = await client.get_workflow_handle(wf.id, run_id=wf.run_id).result()
                if isinstance(res, dict) and res.get("status") == "failed":
                    failed.append(f"{wf.id} ended failed: {res.get('detail', '')[:200]}")
        problems += failed + self.overlaps
        for r in self.ran:
            if "Traceback" in r.err:
                problems.append(f"{r.line}: traceback:\n{r.err[-800:]}")
            if r.code not in DOCUMENTED_EXITS and not (r.args[0] == "audit"):
                problems.append(f"{r.line}: undocumented exit code {r.code}: {r.err.strip()[-200:]}")
            if r.wants_json and r.code == 0:
                try:
                    json.loads(r.out)
                except ValueError:
                    problems.append(f"{r.line}: --json stdout is not one JSON document: {r.out[:200]!r}")
        return {"problems": problems, "commands": len(self.ran), "strikes": len(self.strikes),
                "applied": len(self.applied), "later": outcome, "workflows": len(self.workflows),
                "audit_records": len(audit), "canaries": len(self.canaries), "incidents": len(self.incidents),
                "exits": {c: sum(1 for r in self.ran if r.code == c) for c in sorted({r.code for r in self.ran})}}

    @staticmethod
    def _operator_setup(cid: str, audit) -> bool:
        """Operator changes are signed requests too (req-<nonce>): the setup's `operator add`s."""
        return any(rec.change_id == cid and rec.action.startswith("operator.") for rec in audit)


def seed_from_env(default: int) -> int:
    v = os.environ.get("CHAOS_SEED", "")
    if v in ("", "random"):
        return default if v == "" else random.SystemRandom().randrange(1, 10**6)
    return int(v)
