"""`rollbackctl dev up | down | status`: the embedded stack on loopback.

Data, logs and pid files live under `.dev/` (ROLLBACKCTL_DEV_DIR). Ports come from the same
settings the rest of the tool uses (ROLLBACKCTL_ETCD_ENDPOINTS, TEMPORAL_ADDRESS,
ROLLBACKCTL_TRADING_CORE_URL, ROLLBACKCTL_DEV_*), so two stacks can run side by side.

Components are registered in COMPONENTS: each knows how to start, how to tell it is up, and
where its pid file is. `down` stops exactly the pids it wrote.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from core import procs
from core.settings import DevStackSettings, EtcdSettings, TemporalSettings, TradingCoreSettings


@dataclass
class Component:
    name: str
    start: Callable[["Stack"], int]  # returns the pid
    describe: Callable[["Stack"], str]


class Stack:
    def __init__(self) -> None:
        self.dev = DevStackSettings()
        self.etcd = EtcdSettings()
        self.temporal = TemporalSettings()
        self.core = TradingCoreSettings()
        self.dir = self.dev.dir.resolve()

    # endpoints ------------------------------------------------------------------------------
    @property
    def etcd_hostport(self) -> tuple[str, int]:
        host, _, port = self.etcd.endpoint_list()[0].rpartition(":")
        return host, int(port)

    @property
    def temporal_hostport(self) -> tuple[str, int]:
        host, _, port = self.temporal.temporal_address.rpartition(":")
        return host, int(port)

    @property
    def sim_hostport(self) -> tuple[str, int]:
        u = urlparse(self.core.url)
        return u.hostname or "127.0.0.1", u.port or 80

    @property
    def ofrep_token(self) -> str:
        import os

        return os.environ.get("ROLLBACKCTL_OFREP_TOKEN") or "dev-ofrep-token"

    @property
    def console_url(self) -> str:
        return f"http://localhost:{self.dev.console_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.temporal_hostport[0]}:{self.dev.temporal_ui_port}"

    def pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def running(self, name: str) -> int | None:
        pf = self.pidfile(name)
        if not pf.exists():
            return None
        pid = int(pf.read_text().split()[0])
        return pid if procs.alive(pid) else None

    def env(self) -> dict[str, str]:
        """The environment a child needs to reach this stack."""
        return {
            "ROLLBACKCTL_ETCD_ENDPOINTS": self.etcd.endpoints,
            "ROLLBACKCTL_ETCD_PREFIX": self.etcd.prefix,
            "TEMPORAL_ADDRESS": self.temporal.temporal_address,
            "TEMPORAL_NAMESPACE": self.temporal.temporal_namespace,
            "ROLLBACKCTL_TASK_QUEUE": self.temporal.task_queue,
            "ROLLBACKCTL_TRADING_CORE_URL": self.core.url,
            "ROLLBACKCTL_TEMPORAL_UI_URL": self.ui_url,
            "ROLLBACKCTL_EMERGENCY_LISTEN": f"127.0.0.1:{self.dev.emergency_port}",
            "ROLLBACKCTL_EMERGENCY_URLS": f"http://127.0.0.1:{self.dev.emergency_port}",
            "ROLLBACKCTL_CONSOLE_ORIGIN": self.console_url,  # pages link to decisions there
            **self.dev_paging_env(),
        }

    # Prometheus endpoints (core/metrics.py): (domain offset, SDK offset or None) from ROLLBACKCTL_DEV_METRICS_PORT
    METRICS = {"worker": (0, 1), "monitor": (2, 3), "sim": (4, None), "pagerhook": (5, None), "console": (6, None),
               "ofrep": (7, None)}

    def metrics_targets(self, name: str) -> list[str]:
        dom, sdk = self.METRICS.get(name, (None, None))
        return [f"127.0.0.1:{self.dev.metrics_port + o}" for o in (dom, sdk) if o is not None]

    def metrics_env(self, name: str) -> dict[str, str]:
        """Each long-running process's own /metrics ports (the domain one, and the Temporal SDK's)."""
        dom, sdk = self.METRICS.get(name, (None, None))
        if dom is None:
            return {}
        if not self.dev.metrics:  # off: say so explicitly, whatever the calling shell exports
            return {"ROLLBACKCTL_METRICS_LISTEN": "", "ROLLBACKCTL_SDK_METRICS_LISTEN": ""}
        for t in self.metrics_targets(name):  # a taken port is the same clear error as any other
            procs.require_free("127.0.0.1", int(t.rsplit(":", 1)[1]), f"{name} metrics")
        env = {"ROLLBACKCTL_METRICS_LISTEN": f"127.0.0.1:{self.dev.metrics_port + dom}",
               "ROLLBACKCTL_SDK_METRICS_LISTEN": ""}
        if sdk is not None:
            env["ROLLBACKCTL_SDK_METRICS_LISTEN"] = f"127.0.0.1:{self.dev.metrics_port + sdk}"
        return env

    def metrics_line(self, name: str) -> str:
        t = self.metrics_targets(name) if self.dev.metrics else []
        return f"  (metrics {', '.join(f'http://{x}/metrics' for x in t)})" if t else ""

    @property
    def prometheus_config(self) -> Path:
        return self.dir / "prometheus.yml"

    def write_prometheus_config(self) -> Path:
        """A Prometheus config scraping every endpoint of this stack, with the repo's alert rules."""
        from core import metrics

        rules = Path(__file__).resolve().parent.parent / "monitoring" / "prometheus" / "rollbackctl-rules.yml"
        jobs = {"rollbackctl-worker": ("worker", 0), "rollbackctl-worker-sdk": ("worker", 1),
                "rollbackctl-monitor": ("monitor", 0), "rollbackctl-monitor-sdk": ("monitor", 1),
                "rollbackctl-sim": ("sim", 0), "rollbackctl-pagerhook": ("pagerhook", 0),
                "rollbackctl-console": ("console", 0), "rollbackctl-ofrep": ("ofrep", 0)}
        etcd_host, etcd_port = self.etcd_hostport
        text = metrics.prometheus_config(
            {job: self.metrics_targets(name)[i] for job, (name, i) in jobs.items()}
            | {"etcd": f"{etcd_host}:{etcd_port}"}, rules, scrape_interval_s=self.dev.metrics_scrape_s)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prometheus_config.write_text(text)
        return self.prometheus_config

    @property
    def webhook_url(self) -> str:
        from rollbackctl.pagerhook import PATH
        from core.settings import PagingSettings

        return f"http://{PagingSettings().paging_listen}{PATH}"

    def webhook_secret(self) -> str:
        """The dev stack's PagerDuty webhook subscription secret: made once, kept 0600 under the dev dir."""
        import os
        import secrets

        env = os.environ.get("ROLLBACKCTL_PAGERDUTY_WEBHOOK_SECRET")
        if env:
            return env
        f = self.dir / "pagerduty-webhook-secret"
        if not f.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            f.write_text(secrets.token_hex(32))
            f.chmod(0o600)
        return f.read_text().strip()

    def dev_paging_env(self) -> dict[str, str]:
        """In the embedded stack, pages and chat go to the simulator's sinks unless paging is configured;
        the simulator's "PagerDuty app" sends its signed v3 webhooks to the stack's receiver."""
        import os

        from manual import escalation

        hook = {"ROLLBACKCTL_PAGERDUTY_WEBHOOK_SECRET": self.webhook_secret(),
                "ROLLBACKCTL_SIM_PAGERDUTY_WEBHOOK_URL": self.webhook_url,
                "ROLLBACKCTL_SIM_PAGERDUTY_WEBHOOK_SECRET": self.webhook_secret()}
        if os.environ.get("ROLLBACKCTL_PAGERDUTY_URL"):
            return hook
        base = self.core.url.rstrip("/")
        return {**hook,
            "ROLLBACKCTL_PAGERDUTY_URL": f"{base}/sim/pagerduty/v2/enqueue",
            "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": ",".join(dev_routing_keys()),
            # drills page a game-day service of their own, and chat in their own channel
            "ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS": ",".join(dev_routing_keys(drill=True)),
            "ROLLBACKCTL_SIM_PAGERDUTY_KEYS": ",".join(dev_routing_keys() + dev_routing_keys(drill=True)),
            "ROLLBACKCTL_SLACK_WEBHOOK_URLS": ",".join(
                f"{base}/sim/slack/{lv.slack_channel.lstrip('#')}" for lv in escalation.LEVELS),
            "ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS": f"{base}/sim/slack/{DRILL_SLACK_CHANNEL}",
        }


# How many ports from ROLLBACKCTL_DEV_METRICS_PORT the stack's /metrics endpoints take.
METRICS_PORTS = 1 + max(o for pair in Stack.METRICS.values() for o in pair if o is not None)


DRILL_SLACK_CHANNEL = "game-day"  # the dev stack's drill channel (its Slack sink's path)


def dev_routing_keys(drill: bool = False) -> list[str]:
    """Well-formed PagerDuty integration keys (32 characters) for the dev stack's levels, stable across runs;
    `drill`: the game-day service's, one per level too."""
    import hashlib

    from manual import escalation

    tag = "drill-" if drill else ""
    return [hashlib.sha256(f"rollbackctl-dev-{tag}level-{lv.level}".encode()).hexdigest()[:32]
            for lv in escalation.LEVELS]


def _start_etcd(st: Stack) -> int:
    host, port = st.etcd_hostport
    p = procs.start_etcd(st.dir / "etcd", port, st.dev.etcd_peer_port, st.log("etcd"), host=host)
    return p.pid


def _start_temporal(st: Stack) -> int:
    host, port = st.temporal_hostport
    procs.require_free(host, port, "temporal")
    procs.require_free(host, st.dev.temporal_ui_port, "temporal web UI")
    p = procs.spawn(
        procs.temporal_dev_args(host, port, st.dev.temporal_ui_port, st.dir / "temporal.db", st.temporal.temporal_namespace),
        st.log("temporal"),
    )
    try:
        procs.wait_temporal(st.temporal.temporal_address, st.temporal.temporal_namespace, 60, p)
    except BaseException:
        procs.stop(p.pid)  # never leave a half-started server without a pid file
        raise
    return p.pid


def _python_component(module: str, *args: str) -> Callable[[Stack], int]:
    def start(st: Stack) -> int:
        name = module.rsplit(".", 1)[-1]
        p = procs.spawn([sys.executable, "-m", module, *args], st.log(name), env={**st.env(), **st.metrics_env(name)})
        return p.pid

    return start


def _start_sim(st: Stack) -> int:
    """The simulator: its port must be free, and it is up when it listens (the worker and the monitor
    that start next read it); a simulator that dies first is reported with its log, not as started."""
    host, port = st.sim_hostport
    procs.require_free(host, port, "simulator")
    p = procs.spawn([sys.executable, "-m", "simulator"], st.log("sim"),
                    env={**st.env(), **st.metrics_env("sim"), "ROLLBACKCTL_CONSUMER_ID": "sim-1"})
    try:
        procs.wait_tcp(host, port, 30, p, f"simulator (log {st.log('sim')})")
    except BaseException:
        procs.stop(p.pid)
        raise
    return p.pid


def _start_pagerhook(st: Stack) -> int:
    from urllib.parse import urlparse

    u = urlparse(st.webhook_url)
    return _serving(st, "pagerhook", ["paging", "serve"], u.hostname or "127.0.0.1", u.port or 8710,
                    "PagerDuty webhook receiver", st.metrics_env("pagerhook"))


def _serving(st: Stack, name: str, cli: list[str], host: str, port: int, what: str, env: dict[str, str]) -> int:
    """Start `rollbackctl CLI...` as component `name` on a port that must be free; up once it listens (one
    that dies first is reported with its log and leaves nothing running)."""
    procs.require_free(host, port, what)
    p = procs.spawn([sys.executable, "-c", f"from rollbackctl.cli import main; main({cli!r})"], st.log(name),
                    env={**st.env(), **env})
    try:
        procs.wait_tcp(host, port, 30, p, f"{what} (log {st.log(name)})")
    except BaseException:
        procs.stop(p.pid)
        raise
    return p.pid


def _start_console(st: Stack) -> int:
    """The operator console (`rollbackctl console`) on http://localhost:<ROLLBACKCTL_DEV_CONSOLE_PORT>."""
    return _serving(st, "console", ["console"], "127.0.0.1", st.dev.console_port, "console",
                    {"ROLLBACKCTL_CONSOLE_LISTEN": f"127.0.0.1:{st.dev.console_port}", **st.metrics_env("console")})


def _start_ofrep(st: Stack) -> int:
    """The OFREP endpoint (`rollbackctl ofrep serve`) on 127.0.0.1:<ROLLBACKCTL_DEV_OFREP_PORT>."""
    return _serving(st, "ofrep", ["ofrep", "serve"], "127.0.0.1", st.dev.ofrep_port, "OFREP endpoint",
                    {"ROLLBACKCTL_OFREP_LISTEN": f"127.0.0.1:{st.dev.ofrep_port}",
                     "ROLLBACKCTL_OFREP_TOKEN": st.ofrep_token, "ROLLBACKCTL_CONSUMER_ID": "ofrep-1",
                     **st.metrics_env("ofrep")})


SIM_INSTANCES = ("sim-2", "sim-3")  # beside the simulator (sim-1): the fleet whose receipts a change waits for


def _sim_instance(consumer_id: str) -> Callable[[Stack], int]:
    """Another trading-core instance (`python -m simulator.instance`): up once it follows the matrix and
    has written its receipt (it says so in its log); one that dies first is reported with its log."""
    def start(st: Stack) -> int:
        import time

        log_path = st.log(consumer_id)
        mark = log_path.stat().st_size if log_path.exists() else 0
        p = procs.spawn([sys.executable, "-m", "simulator.instance", "--id", consumer_id], log_path, env=st.env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"simulator instance {consumer_id} exited ({p.returncode}); log {log_path}")
            with open(log_path, "rb") as f:
                f.seek(mark)
                if f"simulator instance {consumer_id}: following".encode() in f.read():
                    return p.pid
            time.sleep(0.05)
        procs.stop(p.pid)
        raise RuntimeError(f"simulator instance {consumer_id} did not start within 30 s; log {log_path}")

    return start


def check(st: Stack) -> None:
    """Refuse a stack whose paging the real services would refuse (one line, before anything starts)."""
    import os

    from activities.paging import check_paging
    from core.settings import PagingSettings

    saved = {k: os.environ.get(k) for k in st.env()}
    os.environ.update(st.env())
    try:
        check_paging(PagingSettings())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


COMPONENTS: list[Component] = [
    Component("etcd", _start_etcd, lambda st: "etcd            http://%s:%d" % st.etcd_hostport),
    Component(
        "temporal",
        _start_temporal,
        lambda st: f"temporal        {st.temporal.temporal_address}  (Web UI {st.ui_url})",
    ),
    Component("sim", _start_sim, lambda st: "simulator       http://%s:%d" % st.sim_hostport + st.metrics_line("sim")),
    *(Component(cid, _sim_instance(cid), lambda st, cid=cid: f"{cid:<15} another trading-core instance "
                                                                "(its receipt: `rollbackctl consumers`)")
      for cid in SIM_INSTANCES),
    Component("worker", _python_component("worker"),
              lambda st: f"worker          task queues {st.temporal.task_queue}, {st.temporal.critical_task_queue} "
                         f"(critical lane)  (emergency lane http://127.0.0.1:{st.dev.emergency_port}/v1/emergency, "
                         f"for when Temporal is down){st.metrics_line('worker')}"),
    # The PagerDuty v3 webhook receiver (`rollbackctl paging serve`): acknowledgements in PagerDuty reach the workflows.
    Component("pagerhook", lambda st: _start_pagerhook(st),
              lambda st: f"PagerDuty hook  {st.webhook_url}  (PagerDuty's v3 webhook subscription posts here)"
                         f"{st.metrics_line('pagerhook')}"),
    # The P0 monitor (`rollbackctl monitor`): hosts the monitor workflow's polling activity.
    Component("monitor", lambda st: procs.spawn(
        [sys.executable, "-c", "from rollbackctl.cli import main; main(['monitor'])"], st.log("monitor"),
        env={**st.env(), **st.metrics_env("monitor")}).pid,
        lambda st: f"P0 monitor      polling {st.core.url} (rollbackctl monitor --status){st.metrics_line('monitor')}"),
    # OpenFeature clients in any language read the matrix here (`rollbackctl ofrep serve`).
    Component("ofrep", _start_ofrep,
              lambda st: f"OFREP           http://127.0.0.1:{st.dev.ofrep_port}/ofrep/v1/  (bearer token "
                         f"{st.ofrep_token!r}; openfeature-provider-ofrep and others){st.metrics_line('ofrep')}"),
    # The operator console (`rollbackctl console`): sign in with a passkey approved by a super admin.
    Component("console", _start_console,
              lambda st: f"console         {st.console_url}  (register a passkey at /register; "
                         f"`rollbackctl passkey approve NAME CODE` approves it){st.metrics_line('console')}"),
]


def register(component: Component) -> None:
    """Later components (simulator, worker, monitor) add themselves here."""
    if all(c.name != component.name for c in COMPONENTS):
        COMPONENTS.append(component)


def up(only: list[str] | None = None, out=print) -> Stack:
    st = Stack()
    st.dir.mkdir(parents=True, exist_ok=True)
    check(st)
    st.write_prometheus_config()
    for c in COMPONENTS:
        if only and c.name not in only:
            continue
        pid = st.running(c.name)
        if pid:
            out(f"  {c.describe(st)}  already running (pid {pid})")
            continue
        pid = c.start(st)
        st.pidfile(c.name).write_text(f"{pid}\n")
        out(f"  {c.describe(st)}  started (pid {pid}, log {st.log(c.name)})")
    if not only and st.dev.metrics:
        out(f"  Prometheus      scrape config {st.prometheus_config} (every /metrics above, the alert rules): "
            f"prometheus --config.file={st.prometheus_config}")
    return st


def down(out=print, only: list[str] | None = None) -> None:
    """Stop the components whose pid files `up` wrote (only these names, when given)."""
    st = Stack()
    for c in reversed(COMPONENTS):
        if only is not None and c.name not in only:
            continue
        pf = st.pidfile(c.name)
        if not pf.exists():
            continue
        pid = int(pf.read_text().split()[0])
        was = procs.stop(pid)
        pf.unlink(missing_ok=True)
        out(f"  {c.name:<15} {'stopped' if was else 'was not running'} (pid {pid})")


def status() -> list[dict]:
    st = Stack()
    return [
        {"name": c.name, "pid": st.running(c.name), "running": st.running(c.name) is not None, "where": c.describe(st)}
        for c in COMPONENTS
    ]


def status_json() -> str:
    return json.dumps(status(), indent=2)

