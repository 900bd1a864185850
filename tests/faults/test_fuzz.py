"""Bad input, fuzzed (hypothesis): switch values, change sets, CLI arguments, workflow inputs, Update
payloads and trading-core health payloads.

The property everywhere: an input either works or gets a specific error (a SwitchValueError, a
store error with its exit code, argparse's exit 2, a pydantic ValidationError, a refusal string, a
SchemaViolation naming the field); never a stray exception. Where an input reaches etcd, the prefix
is dumped before and after: a refused input changes nothing. The inputs tried are counted and the
total is printed at the end of the module (also without -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import shlex
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from contracts.changes import ActorKind, Authority, ChangeSetRequest
from activities.monitor import Detector
from activities.switch_store import Conflict, InvalidChange, NotInitialised, PermissionDenied, StoreError
from contracts.trading_core import SCHEMA_VIOLATION, HealthSnapshot
from activities.trading_core import TradingCoreActivities
from manual import degradation, degradation_plan, rollback, switches
from contracts.roles import Role
from manual.steps import Observe
from rollbackctl.cli import build_parser
from rollbackctl.cli.common import exit_code_for
from tests.support.crew import event_counts
from tests.support.store_helpers import check_store, dump
from tests.support.store_helpers import other_value
from tests.support.wf_helpers import incident, poll_progress, real_worker
from contracts.incidents import MonitorState
from contracts.progress import Awaiting, Decision
from workflows.models import DegradeInput, RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id
from workflows.base import ANSWERS
from workflows.runner import Runner, evaluate

pytestmark = pytest.mark.timeout(600)

COUNT: Counter[str] = Counter()
OUTCOME: Counter[str] = Counter()  # what became of them (not added to the count)
FUZZED: dict[str, str] = {}  # the prefix the change-set fuzzing wrote to
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
FAST = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=FIXTURES)
IO = settings(max_examples=250, deadline=None, database=None, suppress_health_check=FIXTURES)


def summary() -> str:
    """The count of fuzzed inputs and what became of them (printed by tests/faults/conftest.py)."""
    return (f"fuzzed inputs tried: {sum(COUNT.values())} (" + ", ".join(f"{k}: {v}" for k, v in COUNT.items())
            + "); outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOME.items())))


# -- strategies ------------------------------------------------------------------------------------------
NAMES = [s.name for s in switches.SWITCHES]
EDGE_TEXT = ["", " ", "true", "FALSE", " True ", "yes", "1", "0", "-1", "+1", "1.0", "1e3", "1E-3", "NaN", "nan", "inf",
             "-inf", "Infinity", "sNaN", "0x10", "1_000", "1,000", "$10,000", "$-5", "10.005", "2.5x", "10%", "2000ms",
             "x", "%", "ms", "١٢", "\u00a05", "HL_MODE", "hl_mode", " NORMAL_MODE ", "BETTING_MODE ", "BTC,ETH",
             "BTC,,ETH", "btc", "BTC,BTC", "A" * 16, "BTC ETH", ",", "9" * 5000, "1" + "0" * 30, "-0", "0.001",
             "1e999999", "\x00", "🚀", "DROP TABLE", "../../etc"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10 ** 40), 10 ** 40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=25), st.sampled_from(EDGE_TEXT))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=10)
VALID_OF = {sw.name: [sw.default, sw.rollback_value, other_value(sw)] for sw in switches.SWITCHES}
VALID = st.sampled_from([v for sw in switches.SWITCHES for v in (sw.default, sw.rollback_value, other_value(sw))])
VALUE = st.one_of(VALID, JSON, st.from_regex(r"\s?[-$]?[0-9]{1,8}([.][0-9]{1,5})?(x|%|ms)?\s?", fullmatch=True),
                  st.lists(st.from_regex(r"[A-Z0-9]{1,16}", fullmatch=True), max_size=4))
SWITCH_NAME = st.one_of(st.sampled_from(NAMES), st.sampled_from([n.upper() for n in NAMES] + [n[:-1] for n in NAMES]),
                        st.text(max_size=20))
ACTORS = ["alice", "rita", "oscar", "vic", "sam", "monitor", "mallory", "", "ALICE", "alice ", "system"]
ACTOR = st.one_of(st.sampled_from(ACTORS), st.text(max_size=70))
CHANGE_ID = st.one_of(st.sampled_from(["dup-1", "dup-2", "a/b", "x:y", "..", "-"]), st.text(max_size=40),
                      st.from_regex(r"[A-Za-z0-9_.:@/+-]{1,60}", fullmatch=True))
# Mostly well-formed, so that the store's own rules (roles, pre-approved moves, plans, compare-and-swap,
# replays) are reached, not only the request model's: one_of picks its branches about evenly.
OPERATORS = st.sampled_from(["alice", "rita", "oscar", "vic", "sam"])
NAME_MOSTLY = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(NAMES), SWITCH_NAME)
VALUE_MOSTLY = st.one_of(VALID, VALID, VALUE)
ACTOR_MOSTLY = st.one_of(OPERATORS, OPERATORS, OPERATORS, ACTOR)
ID_MOSTLY = st.one_of(st.uuids().map(lambda u: f"fz-{u.hex}"), st.sampled_from(["dup-1", "dup-2"]),
                      CHANGE_ID)


# -- 1. switch values --------------------------------------------------------------------------------------
@FAST
@given(name=st.sampled_from(NAMES), raw=VALUE)
@example(name="liquidation_check_interval_ms", raw="9" * 5000)
@example(name="hedge_max_leverage", raw=1.2345678)
@example(name="liquidation_check_interval_ms", raw=10 ** 5000)
@example(name="hedge_max_leverage", raw=10 ** 5000)
@example(name="normal_threshold", raw=-(10 ** 5000))
def test_switch_values_parse_or_refuse(name, raw):
    COUNT["switch values"] += 1
    sw = switches.get(name)
    try:
        v = sw.parse(raw)
    except switches.SwitchValueError as e:
        assert str(e).startswith(f"{name}: "), e
        OUTCOME["value refused"] += 1
        return
    OUTCOME["value accepted"] += 1
    json.dumps(v, allow_nan=False)  # storable as JSON in etcd
    assert sw.parse(v) == v, "parse is not idempotent"
    text = sw.render(v)
    assert sw.parse(text) == v, f"{name}: {v!r} is shown as {text!r}, which reads back as {sw.parse(text)!r}"


# -- 2. change sets through the audited store -----------------------------------------------------------
@st.composite
def change_sets(draw) -> dict[str, Any]:
    if draw(st.booleans()):  # well-formed: each change a valid value of its switch
        changes = [{"switch": n, "value": draw(st.sampled_from(VALID_OF[n]))}
                   for n in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))]
    else:
        changes = draw(st.lists(st.fixed_dictionaries({"switch": NAME_MOSTLY, "value": VALUE_MOSTLY}), max_size=3))
    d = {
        "change_id": draw(ID_MOSTLY),
        "actor": draw(ACTOR_MOSTLY),
        "changes": changes,
        "reason": draw(st.one_of(st.just("fuzz"), st.just("fuzz"), st.text(max_size=30))),
        "authority": draw(st.one_of(*[st.sampled_from([a.value for a in Authority]) for _ in range(3)],
                                    st.text(max_size=8))),
        "actor_kind": draw(st.sampled_from([k.value for k in ActorKind] * 3 + ["robot"])),
    }
    if d["actor_kind"] == "service" and draw(st.booleans()):
        d["actor"] = "monitor"
    if draw(st.booleans()):
        d["approved_by"] = draw(st.one_of(OPERATORS, st.sampled_from(ACTORS), st.none()))
    if draw(st.booleans()):  # compare-and-swap on some of the switches it touches (or others)
        names = [c["switch"] for c in changes] or NAMES[:1]
        d["expected"] = draw(st.dictionaries(st.one_of(st.sampled_from(names), SWITCH_NAME), VALUE_MOSTLY, max_size=2))
    return d


@settings(IO, max_examples=400)
@given(data=change_sets())
async def test_change_sets_apply_or_are_refused_without_a_trace(store, etcd, prefix, data):
    COUNT["change sets"] += 1
    try:
        req = ChangeSetRequest.model_validate(data)
    except ValidationError:
        OUTCOME["change set: ValidationError"] += 1
        return
    FUZZED.setdefault("prefix", prefix)  # the prefix hypothesis fuzzes (one per test run: the store fixture's)
    if COUNT["change sets"] % 50 == 0:
        await check_store(etcd, prefix)  # the invariants hold while fuzzing, not only at the end
    before = await dump(etcd, prefix)
    try:
        res = await store.apply(req)
    except StoreError as e:
        assert isinstance(e, (InvalidChange, PermissionDenied, Conflict, NotInitialised)) and str(e), repr(e)
        assert await dump(etcd, prefix) == before, f"refused ({e}) but etcd changed"
        OUTCOME[f"change set: {type(e).__name__}"] += 1
        return
    OUTCOME["change set: " + ("replayed" if res.replayed else "applied")] += 1
    if res.replayed:
        # the change id decides (activities/switch_store.py): nothing written, and the answer is the
        # change set first applied under that id, as its audit record says
        assert await dump(etcd, prefix) == before, "a replayed change id wrote something"
        (rec,) = [a for a in await store.audit() if a.id == res.audit_id]
        assert rec.change_id == req.change_id and rec.changes == res.changes
        return
    snap = await store.snapshot()
    for c in req.changes:
        assert snap.switches[c.switch].value == switches.get(c.switch).parse(c.value)


async def test_store_invariants_after_the_fuzzing(etcd):
    """On the prefix the change sets were fuzzed into (it used to read a fresh, empty prefix and could not
    fail), then shown to catch a corruption injected there."""
    from core.etcd import Put

    fuzzed = FUZZED.get("prefix")
    assert fuzzed, "run with test_change_sets_apply_or_are_refused_without_a_trace (it records its prefix)"
    out = await check_store(etcd, fuzzed)
    applied = OUTCOME["change set: applied"]
    assert applied > 0 and len(out["records"]) >= applied  # a real trail: init plus every fuzzed change set that applied
    kv = await etcd.get(f"{fuzzed}switches/hedge_max_leverage")
    rec = json.loads(kv.value)
    await etcd.txn([], [Put(kv.key, json.dumps({**rec, "value": 19.5}).encode())])  # written outside a change set
    with pytest.raises(AssertionError, match="hedge_max_leverage"):
        await check_store(etcd, fuzzed)


# -- 3. CLI arguments ----------------------------------------------------------------------------------------
WORDS = ["init", "switch", "list", "get", "set", "audit", "operator", "add", "rollback", "start", "degrade", "confirm",
         "proceed", "cancel", "escalate", "fix", "status", "dev", "up", "down", "sim", "incidents", "ack", "tick",
         "resolve", "monitor", "canary", "--json", "--as", "--reason", "--expect", "--limit", "--super-admin",
         "--severity", "--scope", "--incident", "--switch", "--observe", "--interval", "--window", "--confirm-sla",
         "--breaches", "--level", "--reference", "--tests-passed", "--no-restore", "--drill", "--wait", "--follow",
         "critical_path_failure", "cross_module", "single_module", "full_system", "on_call", "viewer", "super_admin",
         "0", "-1", "3", "5m", "0s", "-5s", "500ms", "1x", "", "--", "-h"]
RENDERED = st.sampled_from([sw.render(v) for sw in switches.SWITCHES for v in (sw.default, sw.rollback_value,
                                                                                 other_value(sw))])
CLI_VALUE = st.one_of(RENDERED, RENDERED, st.sampled_from(EDGE_TEXT), st.text(max_size=12))
SETS = st.builds(lambda n, v, a, r, e: ["switch", "set", n, v, "--as", a, "--reason", r] + (["--expect", e] if e else []),
                 NAME_MOSTLY, CLI_VALUE, ACTOR_MOSTLY, st.sampled_from(["fuzz", "fuzz", "", " "]),
                 st.one_of(st.none(), st.none(), CLI_VALUE))
ARGV = st.one_of(st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(NAMES), st.text(max_size=10)), max_size=8),
                 SETS, SETS, st.builds(lambda n, j: ["switch", "get", n] + (["--json"] if j else []), NAME_MOSTLY,
                                        st.booleans()),
                 st.builds(lambda n: ["audit", "--limit", n], st.sampled_from(["0", "1", "-1", "5", "x", "99999999999"])),
                 st.builds(lambda n, r, a: ["operator", "add", n, r, "--as", a], st.text(max_size=12),
                                 st.sampled_from(["viewer", "on_call", "god"]), st.sampled_from(ACTORS)))
ETCD_ONLY = {"switch", "audit", "operator", "init"}


@IO
@given(argv=ARGV)
async def test_cli_arguments_work_or_exit_with_a_specific_code(store, etcd, etcd_server, prefix, argv, monkeypatch):
    COUNT["CLI arguments"] += 1
    monkeypatch.setenv("ROLLBACKCTL_ETCD_ENDPOINTS", etcd_server.endpoint)
    monkeypatch.setenv("ROLLBACKCTL_ETCD_PREFIX", prefix)
    monkeypatch.setenv("ROLLBACKCTL_SIGNING", "off")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code in (0, 2), (argv, e.code)
            assert e.code == 0 or "error:" in err.getvalue(), err.getvalue()
            OUTCOME[f"CLI: argparse exit {e.code}"] += 1
            return
    if args.command not in ETCD_ONLY:  # the workflow commands need Temporal: parsing is what is fuzzed here
        return
    before = await dump(etcd, prefix)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            r = args.func(args)
            code = int((await r if asyncio.iscoroutine(r) else r) or 0)
        except Exception as e:  # what main() turns into one line and an exit code
            code = exit_code_for(e)
            assert code in (2, 3, 4, 5), f"{shlex.join(argv)}: unexpected {type(e).__name__}: {e}"
            assert str(e).strip(), f"{shlex.join(argv)}: an error without a message"
    OUTCOME[f"CLI: ran, exit {code}"] += 1
    if code != 0:
        assert await dump(etcd, prefix) == before, f"{shlex.join(argv)} failed with {code} but changed etcd"


# -- 4. workflow inputs ---------------------------------------------------------------------------------------
TD = st.one_of(st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=30)),
               st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(seconds=-1), timedelta(seconds=9)]))
DURATIONS = st.fixed_dictionaries({}, optional={
    k: TD for k in ("decision_window", "observe", "check_interval", "confirm_sla", "fix_reminder", "restore_observe")
} | {"consecutive_breaches": st.integers(-3, 60)})
TARGET = st.one_of(st.none(), st.sampled_from(NAMES + list(rollback.MODULES)), st.text(max_size=15))
ID = st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True), st.text(max_size=12))


def _steps_the_workflow_builds(scope: rollback.Scope, target: str | None, d: rollback.Durations) -> None:
    """Every plan step a rollback builds from its input, whatever branch it takes later."""
    scopes = [scope]
    while (nxt := rollback.NEXT_SCOPE[scopes[-1]]) is not None:
        scopes.append(nxt)
    for s in scopes:
        changes = rollback.target_changes(s, target)
        rollback.checklist_step(changes, True), rollback.checklist_step(changes, False)
        rollback.apply_step(changes, "apply", s)
        rollback.confirm_step(d, s)
        rollback.fix_step(d, rollback.restore_role(list(changes)))
    rollback.observe_step(d), rollback.window_step(d), rollback.level_choice_step(d), rollback.monitor_steps(d)
    Observe(name="observe_5pct", duration=d.restore_observe, interval=d.interval(d.restore_observe),
            checks=rollback.OBSERVE_CHECKS, consecutive=d.consecutive_breaches, on_breach="rollback")


def _round_trip(model) -> None:
    """What the worker decodes is what the client sent (the pydantic data converter)."""
    conv = pydantic_data_converter.payload_converter
    (back,) = conv.from_payloads(conv.to_payloads([model]), [type(model)])
    assert back == model


@FAST
@given(data=st.fixed_dictionaries({
    "incident_id": ID, "summary": st.text(max_size=10), "severity": st.sampled_from([s.value for s in rollback.Severity] + ["sev1"]),
    "scope": st.sampled_from([s.value for s in rollback.Scope] + ["galaxy"]), "switch": TARGET,
    "requested_by": ACTOR, "reason": st.text(max_size=10), "durations": DURATIONS, "drill": st.booleans()}))
def test_rollback_inputs_are_refused_at_the_start_or_run_every_step(data):
    COUNT["workflow inputs"] += 1
    try:
        inp = RollbackInput.model_validate(data)
    except ValidationError:
        return
    _steps_the_workflow_builds(inp.scope, inp.switch, inp.durations)
    _round_trip(inp)


@FAST
@given(data=st.fixed_dictionaries({
    "level": st.integers(-1, 5), "incident_id": ID, "requested_by": ACTOR, "reason": st.text(max_size=10),
    "durations": DURATIONS, "drill": st.booleans()}))
def test_degrade_inputs_are_refused_at_the_start_or_run_every_step(data):
    COUNT["workflow inputs"] += 1
    try:
        inp = DegradeInput.model_validate(data)
    except ValidationError:
        return
    degradation_plan.every_step(degradation.get(inp.level), inp.durations, inp.requested_by)  # the workflow's own
    _round_trip(inp)


# -- 5. Update payloads ------------------------------------------------------------------------------------------
ROSTER = {"alice": "super_admin", "sam": "super_admin", "rita": "risk_manager", "oscar": "on_call", "vic": "viewer"}
DECISION = st.fixed_dictionaries({"actor": ACTOR}, optional={
    "reason": st.one_of(st.text(max_size=10), st.just("  ")), "reference": st.one_of(st.none(), st.text(max_size=8)),
    "tests_passed": st.booleans(), "restore": st.booleans(), "level": st.one_of(st.none(), st.integers(-1, 5)),
    "signature": st.one_of(st.none(), st.text(max_size=8))})
KINDS = sorted({k for ks in ANSWERS.values() for k in ks} | {"approve", "pause", ""})


@FAST
@given(payload=DECISION, kind=st.sampled_from(KINDS), expects=st.one_of(st.none(), st.sampled_from(sorted(ANSWERS))),
       min_role=st.sampled_from([r.value for r in Role]), escalate_open=st.booleans())
def test_decisions_are_refused_with_a_reason_or_meet_the_rule(payload, kind, expects, min_role, escalate_open):
    COUNT["Update payloads"] += 1
    try:
        d = Decision.model_validate(payload)
    except ValidationError:
        return
    r = Runner("rollback-fuzz", "rollback", requested_by="oscar", drill=False, incident="fuzz")
    r.roster = dict(ROSTER)
    r._escalate_open = escalate_open
    if expects is not None:
        now = datetime.now(timezone.utc)
        r.progress.awaiting = Awaiting(step="s", expects=expects, min_role=min_role, since=now, deadline=now, prompt="p")
    why = r.check_decision(kind, d)
    if why is not None:
        assert isinstance(why, str) and why.strip()
        return
    role = Role(ROSTER[d.actor])  # accepted: a known operator ...
    if kind == "escalate" and escalate_open:
        assert role.at_least(Role.ON_CALL)
        return
    assert expects is not None and kind in ANSWERS[expects]  # ... answering what is awaited ...
    assert role.at_least(Role(min_role))  # ... with the role it needs
    if kind == "fix" and d.restore:
        assert d.reference and d.reference.strip() and d.tests_passed
    if kind == "cancel":
        assert d.reason.strip()
    if expects == "level_choice":
        assert d.level in (2, 3) and (d.level == 2 or role.at_least(Role.SUPER_ADMIN))


RAW_UPDATES = st.tuples(st.sampled_from(["confirm", "proceed", "cancel", "fix", "escalate"]),
                        st.one_of(DECISION.filter(lambda p: p.get("actor") not in ("alice", "sam", "oscar", "rita")),
                                  JSON, st.fixed_dictionaries({"actor": st.one_of(st.integers(), st.none(), JSON)})))


async def test_update_payloads_to_a_live_rollback_refused_and_nothing_moves(dev_env, store, etcd, prefix, sim,
                                                                           core_settings, paging_settings, task_queue):
    """Random payloads (bad shapes, unknown actors, a viewer) as Updates to a rollback awaiting its
    confirmation: each refused; etcd, the step and the history unchanged; no workflow task fails."""
    payloads = []

    @settings(max_examples=80, deadline=None, database=None)
    @given(u=RAW_UPDATES)
    def collect(u):
        payloads.append(u)

    collect()
    async with httpx.AsyncClient() as http, real_worker(dev_env, store, core_settings, paging_settings, http,
                                                        task_queue):
        inc = incident()
        h = await dev_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="s", severity=rollback.Severity.CRITICAL, scope=rollback.Scope.CROSS,
                          requested_by="oscar", reason="r",
                          durations=rollback.Durations(observe=timedelta(milliseconds=300),
                                                       check_interval=timedelta(milliseconds=100))),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm")
        before = await dump(etcd, prefix)
        kinds = Counter()
        for name, payload in payloads:
            COUNT["Update payloads"] += 1
            with pytest.raises(WorkflowUpdateFailedError) as e:
                await h.execute_update(name, payload, result_type=dict)
            kinds[type(e.value.cause).__name__] += 1
            assert str(e.value.cause), payload
        assert await dump(etcd, prefix) == before
        p = await h.query(RollbackWorkflow.progress)
        assert p.awaiting.expects == "confirm" and all(not d.accepted for d in p.decisions)
        counts = await event_counts(h)
        assert counts.get("WORKFLOW_TASK_FAILED", 0) == 0, counts
        await h.terminate("fuzz over")
    print(f"\n{len(payloads)} bad Updates to a live rollback, all refused: {dict(kinds)}")


# -- 6. trading-core health payloads -------------------------------------------------------------------------------
HEALTHY = {
    "error_rate": 0.002, "hl_connected": True, "hl_disconnected_for_s": 0.0, "hl_latency_ms": 80.0,
    "hl_margin_ratio": 3.0, "hedge_margin_ratio": 3.5, "liquidation_detection_failures": 0,
    "liquidation_execution_failure_rate": 0.0, "hot_wallet_usd": 2_000_000.0, "order_price_deviation": {"BTC": 0.0005},
    "asset_mismatch_ratio": 0.0, "volatility_pct": {"BTC": 2.0}, "internal_net_exposure_usd": {"BTC": 1000.0},
    "daily_net_pnl_usd": 100.0, "risk_reserve_usd": 400_000.0, "hl_routing_failures": 0, "maintenance": False,
    "as_of": "2026-01-02T03:04:05+00:00", "controls": []}


@st.composite
def health_bodies(draw) -> bytes:
    body: Any = dict(HEALTHY)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "set", "add", "map"]))
        key = draw(st.sampled_from(sorted(HEALTHY)))
        if op == "drop":
            body.pop(key, None)
        elif op == "set":
            body[key] = draw(JSON)
        elif op == "add":
            body[draw(st.text(max_size=8))] = draw(JSON)
        else:
            body[key] = draw(st.dictionaries(st.text(max_size=5), st.one_of(st.floats(), st.integers(), st.text(max_size=3)),
                                              max_size=3))
    kind = draw(st.sampled_from(["json", "json", "json", "other", "bytes"]))
    if kind == "other":
        body = draw(JSON)
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    return json.dumps(body, allow_nan=True).encode()


@FAST
@given(body=health_bodies())
@example(body=b'{"error_rate": NaN}')
@example(body=json.dumps({**HEALTHY, "error_rate": float("nan")}, allow_nan=True).encode())
@example(body=json.dumps({**HEALTHY, "hl_margin_ratio": float("inf")}, allow_nan=True).encode())
# found by this test (a 2,000-year outage crashed the P0 detector's subtraction from now): refused by the contract
@example(body=json.dumps({**HEALTHY, "hl_disconnected_for_s": 10 ** 12}).encode())  # 31,700 years
def test_health_payloads_parse_or_are_a_schema_violation_naming_the_field(body):
    COUNT["health payloads"] += 1
    resp = httpx.Response(200, content=body, headers={"content-type": "application/json"})
    try:
        snap = TradingCoreActivities._parse(HealthSnapshot, resp, "GET /v1/health")
    except ApplicationError as e:
        assert e.type == SCHEMA_VIOLATION and e.non_retryable, e
        assert e.message.startswith("trading core broke the contract on GET /v1/health: "), e.message
        assert "body is not JSON" in e.message or "field '" in e.message, e.message
        return
    health = snap.model_dump(mode="json")
    # what consumes a valid snapshot never fails on it: the rollback's checks and the P0 detector
    evaluate(rollback.OBSERVE_CHECKS, health, switches.defaults())
    Detector(MonitorState()).observe(health, datetime.now(timezone.utc))
    for k in ("error_rate", "hl_margin_ratio", "hedge_margin_ratio", "asset_mismatch_ratio", "hot_wallet_usd"):
        assert math.isfinite(health[k]), f"{k}={health[k]} passed the contract"
