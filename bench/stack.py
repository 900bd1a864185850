"""An isolated embedded stack for benchmarks: its own ports, data dir and key prefix.

Everything a benchmark measures runs for real: etcd, the Temporal dev server, the simulator, the
worker and the P0 monitor, as `rollbackctl dev up` starts them, on free loopback ports (a running dev
stack is not touched). As in production, signing is on: every operator has an Ed25519 key (under
the stack's dir, ROLLBACKCTL_KEY_DIR), starts and decisions are signed (`sign_start`, `signed`) and
the worker verifies them. The monitor polls every ROLLBACKCTL_MONITOR_INTERVAL_S (default 1 s, as in
production).

Benchmarks run one after the other on the same stack; bench/__main__.py calls `reset(st)` before each, so none
depends on what an earlier one left (running workflows, faults, actions in force, switch values).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from contracts.changes import ChangeSetRequest, SwitchChange
from activities.switch_store import SwitchStore
from manual import switches
from contracts.roles import Role
from core import identity, keys, procs
from rollbackctl import devstack
from core.etcd import Etcd
from core.settings import EtcdSettings, TemporalSettings, TradingCoreSettings

SUPER_ADMIN = "alice"
OPERATORS = {"rita": Role.RISK_MANAGER, "oscar": Role.ON_CALL, "sam": Role.SUPER_ADMIN}
EXTRA_SYMBOLS = 200
COMPONENTS = ("etcd", "temporal", "sim", "worker", "monitor")


class Signer:
    """Operators' keys in a directory, and signing as the CLI does (rollbackctl/cli/signing.py)."""

    def __init__(self, key_dir: Path):
        self.key_dir = key_dir
        self._keys: dict = {}

    def generate(self, *names: str) -> dict[str, str]:
        """New key files (0600) for `names`; their public keys."""
        return {n: keys.generate(self.key_dir / f"{n}.key") for n in names}

    def _key(self, actor: str):
        if actor not in self._keys:
            self._keys[actor] = keys.load_file(self.key_dir / f"{actor}.key", actor)
        return self._keys[actor]

    def sign_start(self, inp, action: str, wid: str):
        """`inp` (RollbackInput, DegradeInput, CanaryInput) with its requester's signed start of `wid`."""
        return inp.model_copy(update={"proof": identity.sign_start(self._key(inp.requested_by), inp, action, wid)})

    def signed(self, d, wid: str, kind: str, step: str | None):
        """Decision `d` signed for workflow `wid`, decision `kind`, at the step the workflow waits at."""
        return d.signed(self._key(d.actor), kind, wid, step or "-")

    async def decide(self, client, wid: str, update: str, d, kind: str | None = None):
        """Send Update `update` with `d` signed at the step `wid` is at now (one `progress` query first,
        as `rollbackctl confirm|resolve|...` does)."""
        from contracts.progress import Progress

        h = client.get_workflow_handle(wid)
        if not hasattr(d, "signed_request"):  # a request model that carries no signature
            return await h.execute_update(update, d)
        p = await h.query("progress", result_type=Progress)
        return await h.execute_update(update, self.signed(d, wid, kind or update, p.decision_step()))


@dataclass
class BenchStack:
    dir: Path
    etcd: Etcd
    store: SwitchStore
    temporal: TemporalSettings
    core: TradingCoreSettings
    env: dict[str, str]
    signer: Signer
    monitor_interval_s: float = 1.0

    def sign_start(self, inp, action: str, wid: str):
        return self.signer.sign_start(inp, action, wid)

    def signed(self, d, wid: str, kind: str, step: str | None):
        return self.signer.signed(d, wid, kind, step)

    def pid(self, component: str) -> int | None:
        return devstack.Stack().running(component)

    def peak_rss_mb(self, component: str) -> float | None:
        """Peak resident memory (VmHWM) since the process started or since `reset_peak_rss`."""
        pid = self.pid(component)
        if not pid:
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, all threads) used so far by each component and by this process."""
        hz = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, pid in [*((c, self.pid(c)) for c in COMPONENTS), ("bench_client", os.getpid())]:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(f[11]) + int(f[12])) / hz
            except (OSError, IndexError, ValueError):
                pass
        return out

    def reset_peak_rss(self, component: str) -> None:
        """Start the peak over (Linux: "5" to clear_refs resets VmHWM to the current RSS): a peak per benchmark."""
        pid = self.pid(component)
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass  # not ours, or an old kernel: the peak stays since the start


def _wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path.name}: {text!r} not seen within {timeout}s:\n{path.read_text(errors='replace')[-2000:]}")


@asynccontextmanager
async def isolated_stack(out=print):
    d = Path(tempfile.mkdtemp(prefix="rbctl-bench-"))
    env = {
        "ROLLBACKCTL_DEV_DIR": str(d),
        "ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{procs.free_port()}",
        "ROLLBACKCTL_ETCD_PREFIX": "/bench/",
        "ROLLBACKCTL_DEV_ETCD_PEER_PORT": str(procs.free_port()),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{procs.free_port()}",
        "ROLLBACKCTL_DEV_TEMPORAL_UI_PORT": str(procs.free_port()),
        "ROLLBACKCTL_DEV_EMERGENCY_PORT": str(procs.free_port()),
        "ROLLBACKCTL_DEV_CONSOLE_PORT": str(procs.free_port()),
        "ROLLBACKCTL_DEV_OFREP_PORT": str(procs.free_port()),
        "ROLLBACKCTL_DEV_METRICS_PORT": str(procs.free_port_block(devstack.METRICS_PORTS)),  # /metrics on, as in production
        "ROLLBACKCTL_TRADING_CORE_URL": f"http://127.0.0.1:{procs.free_port()}",
        "ROLLBACKCTL_TASK_QUEUE": "bench",
        "ROLLBACKCTL_LOG_FORMAT": "json",
        "ROLLBACKCTL_LOG_LEVEL": "INFO",
        # production's settings, whatever the calling shell has
        "ROLLBACKCTL_SIGNING": "true",
        "ROLLBACKCTL_KEY_DIR": str(d / "keys"),
        "ROLLBACKCTL_MONITOR_INTERVAL_S": os.environ.get("ROLLBACKCTL_MONITOR_INTERVAL_S", "1.0"),
        # symbols S001..S200 besides BTC/ETH/SOL: one P0 incident per symbol (bench/incidents.py)
        "ROLLBACKCTL_SIM_EXTRA_SYMBOLS": str(EXTRA_SYMBOLS),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        st = devstack.up(out=lambda line: out("  " + line.strip()))
        core = TradingCoreSettings()
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"{core.url}/sim/status", timeout=0.5)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator did not answer")
                time.sleep(0.05)
        es = EtcdSettings()
        async with Etcd.from_settings(es) as etcd:
            store = SwitchStore(etcd, es.prefix)
            signer = Signer(d / "keys")
            pub = signer.generate(SUPER_ADMIN, *OPERATORS)
            await store.init(super_admin=SUPER_ADMIN, actor=SUPER_ADMIN, public_key=pub[SUPER_ADMIN])
            for name, role in OPERATORS.items():
                if await store.operator(name) is None:
                    await store.add_operator(name, role, actor=SUPER_ADMIN, public_key=pub[name])
            _wait_log(st.log("worker"), "worker started", 30)
            _wait_log(st.log("monitor"), "P0 monitor polling every", 30)  # the monitor activity runs
            yield BenchStack(d, etcd, store, TemporalSettings(), core, {**st.env(), **env}, signer,
                             monitor_interval_s=float(env["ROLLBACKCTL_MONITOR_INTERVAL_S"]))
    finally:
        devstack.down(out=lambda line: None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(d, ignore_errors=True)


async def wait_applied(http: httpx.AsyncClient, url: str, revision: int, timeout: float = 10.0,
                        every: float = 0.02) -> float:
    """Poll the simulator every `every` s until it reports `revision` applied; time.time() when it did."""
    deadline = time.monotonic() + timeout
    while (await http.get(f"{url}/sim/switches")).json()["revision"] < revision:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the simulator did not apply revision {revision} within {timeout}s")
        await asyncio.sleep(every)
    return time.time()


async def reset(st: BenchStack) -> dict:
    """A known state before a benchmark, whatever ran before it (bench/__main__.py calls it).

    - every running workflow but the P0 monitor's is terminated (rollbacks, incidents, canaries);
    - the simulator is reset (faults, actions in force, pages, market; it re-reads the switches);
    - every switch is back at its matrix default (one audited change set by the super admin).
    Returns what it did.
    """
    from temporalio.service import RPCError

    from core.temporal_client import connect

    client = await connect(st.temporal)
    running = [wf async for wf in client.list_workflows(
        "ExecutionStatus = 'Running' AND WorkflowType != 'MonitorWorkflow'")]
    sem = asyncio.Semaphore(20)

    async def terminate(wf) -> None:
        async with sem:
            try:
                await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("bench: reset before a benchmark")
            except RPCError:
                pass  # closed meanwhile

    await asyncio.gather(*(terminate(wf) for wf in running))
    st.reset_peak_rss("worker")
    url = st.core.url.rstrip("/")
    async with httpx.AsyncClient(timeout=10) as http:
        (await http.post(f"{url}/sim/reset", json={})).raise_for_status()
        snap = await st.store.snapshot()
        changes = [SwitchChange(switch=s.name, value=s.default) for s in switches.SWITCHES
                   if s.name in snap.switches and snap.switches[s.name].value != s.default]
        if changes:
            res = await st.store.apply(ChangeSetRequest(
                change_id=f"bench-reset-{uuid.uuid4()}", actor=SUPER_ADMIN, reason="bench: switches back to defaults",
                changes=changes))
            await wait_applied(http, url, res.revision)
    return {"terminated": len(running), "switches_reset": [c.switch for c in changes]}
