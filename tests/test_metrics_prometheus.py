"""The metrics as a real Prometheus sees them: the embedded stack on free loopback ports, Debian's
Prometheus scraping every endpoint `dev up` lists, the demo's rollback and P0 incident run through
the CLI, then the series are read back through Prometheus's HTTP API and checked against the
system's own records (the audit chain, the simulator's PagerDuty sink) — not against numbers
written here.

Prometheus's HTTP API (https://prometheus.io/docs/prometheus/latest/querying/api/): an instant
query is `GET /api/v1/query?query=...` answering `{"status": "success", "data": {"resultType":
"vector", "result": [{"metric": {...}, "value": [t, "v"]}]}}`, and a bad expression answers
`"status": "error"` with 400. `promtool check metrics` lints an exposition (names, units, `_total`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core import procs
from rollbackctl import devstack
from tests.support.infra import clean_env
from tests.support.waits import wait_for_value

REPO = Path(__file__).resolve().parent.parent
ROLLBACKCTL = str(Path(sys.executable).with_name("rollbackctl"))

pytestmark = pytest.mark.timeout(900)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, (f"{tool} is not installed: Debian's `prometheus` package provides it "
                  "(`make test` installs it when run as root; else `sudo apt-get install prometheus`)")
    return path


def _stack_env(tmp_path: Path) -> dict[str, str]:
    p = procs.free_port
    return clean_env(
        ROLLBACKCTL_DEV_DIR=str(tmp_path / "dev"),
        ROLLBACKCTL_ETCD_ENDPOINTS=f"127.0.0.1:{p()}", ROLLBACKCTL_DEV_ETCD_PEER_PORT=str(p()),
        TEMPORAL_ADDRESS=f"127.0.0.1:{p()}", ROLLBACKCTL_DEV_TEMPORAL_UI_PORT=str(p()),
        ROLLBACKCTL_TRADING_CORE_URL=f"http://127.0.0.1:{p()}", ROLLBACKCTL_DEV_EMERGENCY_PORT=str(p()),
        ROLLBACKCTL_PAGING_LISTEN=f"127.0.0.1:{p()}", ROLLBACKCTL_DEV_METRICS_PORT=str(procs.free_port_block(devstack.METRICS_PORTS)),
        ROLLBACKCTL_DEV_CONSOLE_PORT=str(p()), ROLLBACKCTL_DEV_OFREP_PORT=str(p()),
        ROLLBACKCTL_DEV_METRICS_SCRAPE_S="1", ROLLBACKCTL_METRICS_COLLECT_S="1",
        ROLLBACKCTL_METRICS_AUDIT_VERIFY_S="2", DEMO_SCENARIOS="rollback,p0", KEEP="1",
    )


class Prom:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        assert len(res) <= 1, f"{expr}: more than one series: {res}"
        return float(res[0]["value"][1]) if res else None


@pytest.fixture
def stack(tmp_path):
    """The stack's settings, its Prometheus (started first: it sees the run as it happens), and a
    `dev down` at the end whatever happened."""
    prometheus = _require("prometheus")
    env = _stack_env(tmp_path)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        st = devstack.Stack()
        cfg = st.write_prometheus_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    port = procs.free_port()
    prom = subprocess.Popen(
        [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        procs.wait_tcp("127.0.0.1", port, 30, prom, f"prometheus (log {tmp_path / 'prometheus.log'})")
        yield env, Prom(f"http://127.0.0.1:{port}"), st
    finally:
        prom.terminate()
        subprocess.run([ROLLBACKCTL, "dev", "down"], env=env, capture_output=True, timeout=120)
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()


def _cli_json(env: dict[str, str], *args: str):
    r = subprocess.run([ROLLBACKCTL, *args, "--json"], env={**env, "ROLLBACKCTL_KEY_DIR": env["ROLLBACKCTL_DEV_DIR"] + "/keys"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


async def _demo(env: dict[str, str], log: Path, scenarios: str | None = None) -> str:
    """`python -m rollbackctl.demo` on the stack (DEMO_SCENARIOS as given: all of the env's by default); its
    output, once it exited 0."""
    import asyncio

    with open(log, "wb") as out:
        demo = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "rollbackctl.demo"],
                                       env={**env, **({"DEMO_SCENARIOS": scenarios} if scenarios else {})},
                                       stdout=out, stderr=subprocess.STDOUT, cwd=REPO, timeout=600)
    assert demo.returncode == 0, log.read_text()[-4000:]
    return log.read_text()


async def until(what: str, fetch, pred, timeout: float = 30.0):
    async def f():
        return fetch()

    return await wait_for_value(f, pred, timeout, what, every=0.5)


async def test_a_rollback_and_a_p0_incident_answer_through_prometheus(stack, tmp_path):
    env, prom, st = stack
    out = await _demo(env, tmp_path / "demo.log")
    assert "/metrics" in out and "prometheus --config.file=" in out

    # Every target is up (one scrape after the demo, whose last change the collectors have seen).
    def targets() -> list[dict]:
        return httpx.get(f"{prom.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    ts = await until("every target scraped and up", targets,
                    lambda t: len(t) == 9 and all(x["health"] == "up" for x in t), 60)
    assert {x["labels"]["job"] for x in ts} >= {"rollbackctl-worker", "rollbackctl-monitor", "rollbackctl-sim",
                                               "rollbackctl-console", "rollbackctl-ofrep"}

    # The control matrix: the gauge says what etcd says; HL_MODE was in force during the rollback.
    now = {s["name"]: s["value"] for s in _cli_json(env, "switch", "list")}
    mode = now["routing_mode"]
    await until("routing_mode's gauge", lambda: prom.value(
        f'max(rollbackctl_switch_enum_value{{switch="routing_mode",value="{mode}"}})'), lambda v: v == 1.0, 30)
    assert prom.value('max(max_over_time(rollbackctl_switch_enum_value{switch="routing_mode",value="HL_MODE"}[15m]))') == 1.0
    assert prom.value('max(rollbackctl_switch_value{switch="global_betting_enabled"})') == (1.0 if now["global_betting_enabled"] else 0.0)

    # Changes by switch: exactly the audit chain's count of routing_mode changes (the counter is the chain's total).
    audit = _cli_json(env, "audit", "--limit", "1000")
    records = audit if isinstance(audit, list) else audit.get("records", [])
    routing = sum(1 for r in records for c in r.get("changes", []) if c.get("switch") == "routing_mode")
    assert routing >= 2  # to HL_MODE and back
    await until("the change counter", lambda: prom.value(
        'sum(rollbackctl_switch_changes_total{switch="routing_mode"})'), lambda v: v == routing, 30)
    head = max(int(r["id"]) for r in records)
    assert prom.value("max(rollbackctl_audit_head_sequence)") == head
    await until("a passing verification", lambda: prom.value("min(rollbackctl_audit_verify_ok)"), lambda v: v == 1.0, 30)

    # The fleet: the dev stack's four consumers (sim-1..3, ofrep-1) live, none behind the last change.
    await until("the fleet's receipts", lambda: prom.value("max(rollbackctl_consumers_live)"), lambda v: v == 4.0, 30)
    assert prom.value("max(rollbackctl_consumers_behind)") == 0.0

    # Propagation, measured at the consumer (the simulator): every change applied, within the manual's 1 s.
    n = prom.value('sum(rollbackctl_switch_propagation_seconds_count{job="rollbackctl-sim"})')
    assert n is not None and n >= routing
    assert prom.value('histogram_quantile(0.99, sum by (le) (rollbackctl_switch_propagation_seconds_bucket{job="rollbackctl-sim"}))') < 1.0

    # The P0: open while it lasted, closed now; one acknowledgement, one resolve (workflow events, SDK endpoint).
    assert prom.value('max(max_over_time(rollbackctl_incidents_open{rule="hot_wallet"}[15m]))') == 1.0
    await until("the incident gauge back to 0", lambda: prom.value('max(rollbackctl_incidents_open{rule="hot_wallet"})'),
               lambda v: v == 0.0, 30)
    assert prom.value('sum(rollbackctl_incident_ack_seconds_count{rule="hot_wallet"})') == 1.0
    # ... within the manual's 5 minutes: the histogram has the SLA as a bucket bound (not the SDK's default ones)
    assert prom.value('sum(rollbackctl_incident_ack_seconds_bucket{rule="hot_wallet",le="300"})') == 1.0
    assert prom.value('sum(rollbackctl_incident_action_seconds_count{rule="hot_wallet"})') == 1.0
    assert prom.value('sum(rollbackctl_workflows_finished_total{kind="incident",result="resolved"})') == 1.0
    assert prom.value('sum(rollbackctl_workflows_finished_total{kind="rollback"})') >= 1.0
    assert prom.value('sum(rollbackctl_health_checks_total{kind="rollback",result="ok"})') >= 1.0

    # While they ran: the rollback and the incident were counted, and each waited for a person.
    for kind in ("rollback", "incident"):
        assert prom.value(f'max(max_over_time(sum by (instance) (rollbackctl_workflows_running{{kind="{kind}"}})[15m:1s]))') >= 1
        assert prom.value(f'max(max_over_time(sum by (instance) (rollbackctl_awaiting_human{{kind="{kind}"}})[15m:1s]))') >= 1
    await until("nothing left running", lambda: prom.value("sum(rollbackctl_workflows_running)") or 0.0,
                lambda v: v == 0.0, 30)

    # Pages: what the worker counts as sent is what the simulator's PagerDuty received.
    pd = httpx.get(f"{env['ROLLBACKCTL_TRADING_CORE_URL']}/sim/pagerduty", timeout=10).json()
    assert prom.value('sum(rollbackctl_pages_sent_total{channel="pagerduty"})') == len(pd)
    assert (prom.value('sum(rollbackctl_pages_failed_total)') or 0.0) == 0.0
    assert prom.value('sum(rollbackctl_pagerduty_webhooks_total{outcome="forwarded"})') >= 1.0

    # The monitor: polling, and Temporal sees a worker on the main task queue.
    assert prom.value("sum(rollbackctl_monitor_polls_total)") > 10
    assert prom.value("min(rollbackctl_monitor_seconds_since_last_poll)") < 5
    assert prom.value(f'max(rollbackctl_task_queue_pollers{{task_queue="{st.temporal.task_queue}",type="workflow"}})') >= 1

    # The Temporal SDK's own series, and etcd's.
    assert prom.query('temporal_workflow_completed_total') or prom.query('temporal_request_total')
    assert prom.query('etcd_server_has_leader')

    # The rules loaded and healthy, none of them firing on a healthy stack.
    groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    in_file = (REPO / "monitoring" / "prometheus" / "rollbackctl-rules.yml").read_text().count("- alert: ")
    assert in_file >= 10 and len(rules) == in_file and all(r["health"] == "ok" for r in rules), rules
    firing = [a for a in httpx.get(f"{prom.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
              if a["labels"]["alertname"] != "RollbackctlSwitchOffDefaultTooLong"]
    assert firing == [], firing

    # Every dashboard query is valid PromQL against the real server.
    sys.path.insert(0, str(REPO / "monitoring" / "grafana"))
    import build_dashboard

    for expr in build_dashboard.queries():
        prom.query(expr)

    # The HTTP services count by route template: the OFREP endpoint (an OpenFeature client's poll, then its
    # If-None-Match poll answered 304 per the OFREP OpenAPI; a request without the token) and the console
    # (two workflows' pages without a session: redirected to sign in; a path no route has).
    ofrep = f"http://127.0.0.1:{st.dev.ofrep_port}/ofrep/v1/evaluate/flags"
    auth = {"Authorization": f"Bearer {st.ofrep_token}"}
    first = httpx.post(ofrep, json={"context": {}}, headers=auth, timeout=10)
    assert first.status_code == 200 and first.headers["etag"]
    again = httpx.post(ofrep, json={"context": {}}, headers={**auth, "If-None-Match": first.headers["etag"]}, timeout=10)
    assert again.status_code == 304
    assert httpx.post(ofrep, json={}, timeout=10).status_code == 401
    for wid in ("rollback-metrics-a", "rollback-metrics-b"):
        assert httpx.get(f"{st.console_url}/workflows/{wid}", timeout=10).status_code == 303
    assert httpx.get(f"{st.console_url}/no-such-page", timeout=10).status_code == 404
    flags = 'sum(rollbackctl_http_requests_total{job="rollbackctl-ofrep",route="/ofrep/v1/evaluate/flags",method="POST",code="%s"})'
    await until("the OFREP 304 counted", lambda: prom.value(flags % "304"), lambda v: v == 1.0, 30)
    # the 401 came last: a scrape can fall between it and the 304
    await until("the OFREP 401 counted", lambda: prom.value(flags % "401"), lambda v: v == 1.0, 30)
    assert prom.value(flags % "200") >= 1.0
    assert prom.value('sum(rollbackctl_http_request_duration_seconds_count{job="rollbackctl-ofrep"})') >= 3.0
    await until("the console's redirects counted", lambda: prom.value(
        'sum(rollbackctl_http_requests_total{job="rollbackctl-console",route="/workflows/{wid}",code="303"})'),
        lambda v: v == 2.0, 30)
    # (a scrape can fall between the redirects and the 404: waited for too)
    await until("the console's 404 counted", lambda: prom.value(
        'sum(rollbackctl_http_requests_total{job="rollbackctl-console",route="unmatched",code="404"})'),
        lambda v: v == 1.0, 30)
    assert not prom.query('{__name__=~"rollbackctl_http_.*",route=~".*metrics-a.*|.*no-such-page.*"}')
    # The OFREP cache is a consumer too: the rollback's changes reached it, timed.
    assert prom.value('sum(rollbackctl_switch_propagation_seconds_count{job="rollbackctl-ofrep"})') >= routing

    # Every endpoint's exposition passes promtool's lint.
    promtool = _require("promtool")
    for t in ts:
        text = httpx.get(t["scrapeUrl"], timeout=10).text
        if t["labels"]["job"] == "etcd":
            continue  # etcd's own series: not ours to lint
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, f"{t['labels']['job']}: {r.stdout}{r.stderr}"

    # A Phase 3 canary that promotes, then one that rolls back on an injected 2% error rate (the demo's
    # canary scenario, run again on the same stack): its stage gauges followed it while it ran and are
    # gone now that no canary runs; its checks and its ends were counted.
    await _demo(env, tmp_path / "demo-canary.log", "canary")
    stages = len(_cli_json(env, "canary", "plan", "phase3")["stages"])
    assert stages == 4
    assert prom.value('max(max_over_time(rollbackctl_canary_stages{phase="phase3"}[15m]))') == stages
    assert prom.value('max(max_over_time(rollbackctl_canary_stage{phase="phase3"}[15m]))') == stages  # Full Open reached
    assert prom.value('max(max_over_time(rollbackctl_canary_last_check_ok{phase="phase3"}[15m]))') == 1.0
    await until("the canary gauges gone with the canaries", lambda: prom.query("rollbackctl_canary_stage"),
                lambda v: v == [], 30)
    assert prom.value('sum(rollbackctl_workflows_finished_total{kind="canary",result="passed"})') == 1.0
    assert prom.value('sum(rollbackctl_workflows_finished_total{kind="canary",result="rolled_back"})') == 1.0
    assert prom.value('sum(rollbackctl_health_checks_total{kind="canary",result="ok"})') >= stages
    assert prom.value('sum(rollbackctl_health_checks_total{kind="canary",result="failed"})') >= 1.0

    # A game day (the demo's drill: p0-hedge_margin at speed 30) on the same stack: counted, but apart. Its
    # acknowledgement and its end carry drill="true"; the real series did not move; the drill's pages went to the
    # game-day service's keys (what the worker counts as sent there is what that service received); no alert.
    real_acks = prom.value('sum(rollbackctl_incident_ack_seconds_count{drill="false"})')
    # (the demo's rollback is a drill too, and the canary scenario's /sim/reset emptied the sink since: counted
    # from here)
    drill_pages = prom.value('sum(rollbackctl_pages_sent_total{channel="pagerduty",drill="true"})') or 0.0
    out = await _demo(env, tmp_path / "demo-drill.log", "drill")
    assert "| acknowledged | oscar |" in out and "back where the drill found it" in out
    await until("the drill's acknowledgement", lambda: prom.value(
        'sum(rollbackctl_incident_ack_seconds_count{rule="hedge_margin",drill="true"})'), lambda v: v == 1.0, 30)
    assert prom.value('sum(rollbackctl_incident_ack_seconds_count{drill="false"})') == real_acks
    assert prom.value('sum(rollbackctl_incident_ack_seconds_count{rule="hedge_margin",drill="false"})') is None
    await until("the drill's end", lambda: prom.value(
        'sum(rollbackctl_workflows_finished_total{kind="incident",result="resolved",drill="true"})'),
        lambda v: v == 1.0, 30)
    assert prom.value('sum(rollbackctl_workflows_finished_total{kind="incident",drill="false"})') == 1.0
    drill_keys = set(devstack.dev_routing_keys(drill=True))
    pd = httpx.get(f"{env['ROLLBACKCTL_TRADING_CORE_URL']}/sim/pagerduty", timeout=10).json()
    on_drill = [p for p in pd if p.get("routing_key") in drill_keys]
    assert on_drill and all(str(p["dedup_key"]).startswith("incident-hedge_margin/") for p in on_drill), on_drill
    assert not [p for p in pd if p.get("routing_key") not in drill_keys
                and str(p.get("dedup_key", "")).startswith("incident-hedge_margin/")]
    try:
        await until("the drill's pages counted", lambda: prom.value(
            'sum(rollbackctl_pages_sent_total{channel="pagerduty",drill="true"})'),
            lambda v: v == drill_pages + len(on_drill), 30)
    except AssertionError as e:
        raise AssertionError(f"{e}; at the sink: {[(p['event_action'], p['dedup_key']) for p in on_drill]}; "
                             f"series: {prom.query('rollbackctl_pages_sent_total')}") from None
    firing = [a for a in httpx.get(f"{prom.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
              if a["labels"]["alertname"] != "RollbackctlSwitchOffDefaultTooLong"]
    assert firing == [], firing
