"""The metrics catalogue against its users' tools: promtool lints the exposition and unit-tests the
alert rules; the README lists every series; the Grafana dashboard names only series that exist; the
switch gauges and the paging counters say what the manual and the (strict) PagerDuty sink say.

Prometheus conventions (https://prometheus.io/docs/practices/naming/): base units (`_seconds`),
`_total` on counters, enum states as a label with 1 for the current one; `promtool check metrics`
enforces the lint part.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import metrics as am
from activities.paging import PageInput, PagingActivities
from core import metrics
from manual import switches

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "monitoring" / "prometheus"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: `sudo apt-get install prometheus` (`make test` installs it as root)"
    return path


def _catalogue() -> set[str]:
    return {n for n, _, _ in metrics.domain_series()} | {s.name for s in metrics.WORKFLOW_SERIES}


def test_promtool_checks_and_unit_tests_the_alert_rules():
    promtool = _tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(RULES / "rollbackctl-rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", "rollbackctl-rules.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_the_rules_name_only_series_that_exist():
    text = (RULES / "rollbackctl-rules.yml").read_text()
    used = set(re.findall(r"\b(rollbackctl_[a-z_]+?)(?:_bucket|_count|_sum)?\b", text))
    assert used and used <= _catalogue(), used - _catalogue()


def test_every_series_is_in_the_readme_and_the_readme_invents_none():
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(rollbackctl_[a-z_]+)`", readme, re.M))
    assert listed == _catalogue(), {"missing from README": _catalogue() - listed, "not a metric": listed - _catalogue()}


def test_the_dashboard_is_built_from_its_source_and_names_only_real_series():
    sys.path.insert(0, str(REPO / "monitoring" / "grafana"))
    import build_dashboard

    assert (REPO / "monitoring" / "grafana" / "rollbackctl.json").read_text() == build_dashboard.render(), \
        "rollbackctl.json is stale: python monitoring/grafana/build_dashboard.py"
    used = {m for q in build_dashboard.queries()
            for m in re.findall(r"\b(rollbackctl_[a-z_]+?)(?:_bucket|_count|_sum)?\b", q)}
    assert used <= _catalogue(), used - _catalogue()
    # The five areas (matrix, incidents, rollbacks, canary, paging), and the HTTP services.
    titles = [t for t, _ in build_dashboard.ROWS]
    assert titles == ["Control matrix", "P0 incidents", "Rollbacks, degradations and decisions", "Canary", "Drills",
                      "Paging", "Console and OFREP"]
    # A game day is counted apart (issue 22): every panel about the exchange selects drill="false" on every
    # series that has the label, and the Drills row drill="true".
    for title, panels in build_dashboard.ROWS:
        want = 'drill="true"' if title == "Drills" else 'drill="false"'
        for ptitle, _, targets, _, _ in panels:
            for expr, _ in targets:
                assert _drill_selectors(expr) <= {want}, (title, ptitle, expr)


def _drill_series() -> set[str]:
    """Names of the series that carry the drill label (as exported; a histogram's base name)."""
    gauges = {m.name for group in metrics.GROUPS.values() for g in group if "drill" in g._labelnames
              for m in g.describe()}
    return gauges | {s.name for s in metrics.WORKFLOW_SERIES if "drill" in s.labels}


def _drill_selectors(expr: str) -> set[str]:
    """For each drill-labelled series `expr` reads: its drill matcher ('drill="false"'), or "none" when it
    reads the series without one."""
    out = set()
    for m in re.finditer(r"\b(rollbackctl_[a-z_]+?)(_bucket|_count|_sum)?\b(\{[^}]*\})?", expr):
        if m.group(1) in _drill_series() or m.group(1) + "_total" in _drill_series():
            sel = re.search(r'drill\s*=\s*"(true|false)"', m.group(3) or "")
            out.add(f'drill="{sel.group(1)}"' if sel else "none")
    return out


def test_no_alert_rule_reads_a_drill():
    """A drill's incident left unacknowledged past its (scaled) SLA must page nobody: every rule that reads a
    drill-labelled series selects drill="false" (promtool's unit test shows the drill series not firing)."""
    text = (REPO / "monitoring" / "prometheus" / "rollbackctl-rules.yml").read_text()
    exprs = [block.split("labels:")[0] for block in text.split("- alert: ")[1:]]  # name, comment and expr
    read = {e: _drill_selectors(e) for e in exprs if _drill_selectors(e)}
    assert read and all(v == {'drill="false"'} for v in read.values()), read


def test_switch_gauges_follow_the_manual_and_pass_promtool():
    """Every switch of the manual at its default, then routing_mode moved off it: one enum value is 1,
    the others 0; off-default flips; symbols lists export no value (no unbounded label)."""
    for sw in switches.SWITCHES:
        am.set_switch(sw.name, sw.default, {"updated_at": "2026-12-05T00:00:00.000Z"})
    reg = metrics.registry(("matrix",))
    assert reg.get_sample_value("rollbackctl_switch_off_default", {"switch": "routing_mode"}) == 0.0
    other = next(m for m in switches.ROUTING_MODES if m != switches.get("routing_mode").default)
    am.set_switch("routing_mode", other, {"updated_at": "2026-12-05T01:00:00.000Z"})
    modes = {v: reg.get_sample_value("rollbackctl_switch_enum_value", {"switch": "routing_mode", "value": v})
             for v in switches.ROUTING_MODES}
    assert modes == {m: 1.0 if m == other else 0.0 for m in switches.ROUTING_MODES}
    assert reg.get_sample_value("rollbackctl_switch_off_default", {"switch": "routing_mode"}) == 1.0
    assert reg.get_sample_value("rollbackctl_switch_last_change_timestamp_seconds", {"switch": "routing_mode"}) == 1796432400.0
    bools = [s for s in switches.SWITCHES if s.type is switches.SwitchType.BOOL]
    assert reg.get_sample_value("rollbackctl_switch_value", {"switch": bools[0].name}) == float(bools[0].default)
    symbols = [s.name for s in switches.SWITCHES if s.type is switches.SwitchType.SYMBOLS]
    text = generate_latest(reg).decode()
    assert symbols and not any(f'rollbackctl_switch_value{{switch="{n}"}}' in text for n in symbols)
    r = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_audit_record_counts_each_switch_it_changed_by_authority_and_role():
    reg = metrics.registry(("matrix",))
    labels = {"switch": "routing_mode", "authority": "rollback", "role": "on_call"}
    before = reg.get_sample_value("rollbackctl_switch_changes_total", labels) or 0.0
    am.count_record({"authority": "rollback", "role": "on_call", "changes": [
        {"switch": "routing_mode", "old": "NORMAL_MODE", "new": "HL_MODE"},
        {"switch": "not_a_switch", "old": 1, "new": 2}]})  # unknown names are not labels
    assert reg.get_sample_value("rollbackctl_switch_changes_total", labels) == before + 1
    assert "not_a_switch" not in generate_latest(reg).decode()


@pytest.fixture
async def paging(paging_settings):
    acts = PagingActivities.from_settings(paging_settings)
    yield acts
    await acts.aclose()


async def test_pages_sent_and_failed_count_what_pagerduty_answered(sim, paging):
    """PagerDuty's Events API v2 answers 202 to an accepted event and 429 past the rate limit
    (https://developer.pagerduty.com/docs/events-api-v2/overview/); the strict sink does the same."""
    reg = metrics.registry(("paging",))
    lab = {"channel": "pagerduty", "level": "1", "drill": "false"}
    sent0 = reg.get_sample_value("rollbackctl_pages_sent_total", lab) or 0.0
    failed0 = reg.get_sample_value("rollbackctl_pages_failed_total", lab) or 0.0
    await sim.paging_config(pagerduty_events_per_min=1)
    env = ActivityEnvironment()
    page = lambda k: PageInput(event_action="trigger", dedup_key=k, summary="HL down", escalation_level=1)  # noqa: E731
    await env.run(paging.page, page("wf-m/a:L1"))
    with pytest.raises(ApplicationError):
        await env.run(paging.page, page("wf-m/b:L1"))
    pd = await sim.pagerduty()
    assert len(pd["alerts"]) == 1 and [r["status"] for r in pd["rejected"]] == [429]
    assert reg.get_sample_value("rollbackctl_pages_sent_total", lab) == sent0 + 1
    assert reg.get_sample_value("rollbackctl_pages_failed_total", lab) == failed0 + 1


def test_each_process_exports_only_what_it_fills():
    """An unset gauge exported as 0 lies (an audit 'failing' in the simulator): the groups are disjoint and
    cover the catalogue, and the simulator's endpoint has no audit or monitor series."""
    seen: list[str] = []
    for group in metrics.GROUPS.values():
        seen += [m.describe()[0].name for m in group]
    assert len(seen) == len(set(seen))
    text = generate_latest(metrics.registry(metrics.CONSUMER)).decode()
    assert "rollbackctl_switch_propagation_seconds" in text
    assert "rollbackctl_audit" not in text and "rollbackctl_monitor" not in text


async def test_http_requests_are_counted_by_route_template_never_by_raw_path():
    """Labels stay bounded (Prometheus naming practice: no label for user-supplied values): a workflow id in
    the path is never a label value, a path no route has is `unmatched`, a method no one uses is `other`;
    the status is the one the client got, a 405 and an unhandled error included."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def boom(request):
        raise RuntimeError("broken handler")

    app = Starlette(routes=[Route("/workflows/{wid}", lambda r: PlainTextResponse(r.path_params["wid"])),
                            Route("/boom", boom)])
    reg = metrics.registry(("http",))
    service = "test-http"

    def count(route: str, method: str, code: str) -> float:
        return reg.get_sample_value("rollbackctl_http_requests_total",
                                    {"service": service, "route": route, "method": method, "code": code}) or 0.0

    before = {k: count(*k) for k in [("/workflows/{wid}", "GET", "200"), ("/workflows/{wid}", "POST", "405"),
                                     ("unmatched", "GET", "404"), ("unmatched", "other", "404"), ("/boom", "GET", "500")]}
    transport = httpx.ASGITransport(app=metrics.HttpMetrics(app, service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for wid in ("rollback-1", "rollback-2", "rollback-3"):
            assert (await http.get(f"/workflows/{wid}")).text == wid
        assert (await http.post("/workflows/rollback-1")).status_code == 405
        assert (await http.get("/nowhere")).status_code == 404
        assert (await http.request("BREW", "/nowhere")).status_code == 404
        assert (await http.get("/boom")).status_code == 500
    after = {k: count(*k) for k in before}
    assert {k: after[k] - before[k] for k in before} == {
        ("/workflows/{wid}", "GET", "200"): 3, ("/workflows/{wid}", "POST", "405"): 1, ("unmatched", "GET", "404"): 1,
        ("unmatched", "other", "404"): 1, ("/boom", "GET", "500"): 1}
    text = generate_latest(reg).decode()
    assert "rollback-1" not in text and "nowhere" not in text and "BREW" not in text
    assert reg.get_sample_value("rollbackctl_http_request_duration_seconds_count",
                                {"service": service, "route": "/workflows/{wid}"}) >= 3


async def test_with_temporal_unreachable_the_workflow_gauges_keep_their_last_values(dev_env, store, task_queue):
    """README, "Metrics": when the worker cannot read workflow state from Temporal, the gauges keep what it
    last saw and `rollbackctl_metrics_collections_total{outcome="failed"}` counts the miss (the alert
    RollbackctlMetricsCollectionFailing reads it). Temporal is the real dev server behind a loopback proxy
    that resets every connection (`cut`), as a partition would."""
    import asyncio
    from datetime import timedelta

    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from manual.rollback import Durations, Scope, Severity
    from tests.support.proxy import Proxy
    from tests.support.standins import StandIns
    from tests.support.waits import wait_for_value
    from tests.support.wf_helpers import incident, make_worker, poll_progress, terminate_idle
    from workflows.models import RollbackInput
    from workflows.rollback import RollbackWorkflow, rollback_workflow_id

    reg = metrics.registry(("workflows",))
    proxy = Proxy(dev_env.client.service_client.config.target_host).start()
    client = await Client.connect(proxy.endpoint, namespace=dev_env.client.namespace,
                                  data_converter=pydantic_data_converter)
    wm = am.WorkflowMetrics(client, every_s=3600, query_timeout_s=3)

    def gauges() -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in reg.collect() for s in m.samples
                if not s.name.startswith("rollbackctl_metrics_collections")}

    def failed() -> float:
        return reg.get_sample_value("rollbackctl_metrics_collections_total", {"outcome": "failed"}) or 0.0

    async with make_worker(dev_env, store, StandIns(), task_queue):
        inc = incident()
        h = await dev_env.client.start_workflow(
            RollbackWorkflow.run, RollbackInput(
                incident_id=inc, summary="error rate 3%", severity=Severity.CRITICAL, scope=Scope.CROSS,
                requested_by="oscar", reason="internalization failing",
                durations=Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250))),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        try:
            p = await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.step == "confirm")

            async def seen() -> float | None:
                await wm.collect()
                return reg.get_sample_value("rollbackctl_workflows_running", {"kind": "rollback", "step": p.current_step,
                                                                          "drill": "false"})

            await wait_for_value(seen, lambda v: (v or 0) >= 1, 20, "the rollback in the gauges (visibility lags)")
            before, failed0 = gauges(), failed()
            assert reg.get_sample_value("rollbackctl_awaiting_human", {"kind": "rollback", "role": p.awaiting.min_role,
                                                                     "drill": "false"}) >= 1

            proxy.cut()
            stop = asyncio.Event()
            loop = asyncio.create_task(wm.run(stop))

            async def misses() -> float:
                return failed()

            await wait_for_value(misses, lambda v: v == failed0 + 1, 60, "a failed collection counted", every=0.2)
            stop.set()
            await loop
            assert gauges() == before  # nothing reset, nothing dropped

            proxy.open()
            await wm.collect()  # Temporal back: the next collection succeeds and says the same
            assert reg.get_sample_value("rollbackctl_workflows_running", {"kind": "rollback", "step": p.current_step,
                                                                          "drill": "false"}) >= 1
        finally:
            proxy.open()
            await terminate_idle(h)
            proxy.close()
