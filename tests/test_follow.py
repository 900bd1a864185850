"""`rollbackctl status ID --follow` says what happens while nothing seems to: each health check with each
value against its limit, each wait (what, from whom, its ways out) and a countdown for every running clock
(observation left and the next check, a decision window, the confirm SLA's next re-page). The renderer
is pure and tested on its own; one run follows a real rollback on the dev server through the CLI."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from contracts.progress import Awaiting, CheckResult, Decision, Exit, Progress, StepRecord
from manual.rollback import Durations, Scope, Severity
from rollbackctl.cli.workflow_cmds import CLOCK_EVERY, FollowState, countdowns, follow_lines
from tests.support.fixtures_sim import apply_and_wait
from tests.support.infra import clean_env
from tests.support.wf_helpers import awaiting, incident, poll_progress, real_worker
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

T0 = datetime(2026, 12, 4, 3, 0, 0, tzinfo=timezone.utc)
S = timedelta(seconds=1)


def observing() -> Progress:
    return Progress(
        workflow_id="rollback-X", kind="rollback", current_step="observe",
        history=[StepRecord(index=0, name="apply", kind="apply", started_at=T0, ended_at=T0 + S, outcome="ok",
                            detail="audit 000000000009"),
                 StepRecord(index=1, name="observe", kind="observe", started_at=T0 + S)],
        checks=[CheckResult(at=T0 + 16 * S, ok=True, readings=["error_rate=0.002 (<= 0.01) ok",
                                                                "hl_connected=True (== True) ok"])],
        observing_until=T0 + 301 * S, next_check_at=T0 + 31 * S)


def test_each_check_with_its_values_and_the_observation_clock_once_per_interval():
    st, p = FollowState(), observing()
    lines = follow_lines(st, p, T0 + 20 * S)
    assert lines == [
        "  03:00:01  apply                  ok         audit 000000000009",
        "  03:00:16  check ok: error_rate=0.002 (<= 0.01) ok, hl_connected=True (== True) ok",
        "  03:00:20  observe: 4m41s left, next check in 11s",
    ]
    assert follow_lines(st, p, T0 + 21 * S) == []  # nothing new, the clock printed 1 s ago
    p.checks.append(CheckResult(at=T0 + 31 * S, ok=False, breaches=["error_rate=0.03 (needs <= 0.01)"],
                                readings=["error_rate=0.03 (<= 0.01) FAILED"]))
    assert follow_lines(st, p, T0 + 32 * S) == ["  03:00:31  check FAILED: error_rate=0.03 (<= 0.01) FAILED"]
    assert follow_lines(st, p, T0 + 20 * S + CLOCK_EVERY) == ["  03:00:50  observe: 4m11s left, next check in 0s"]


def test_a_wait_says_what_from_whom_its_exits_and_when_it_re_pages():
    st, p = FollowState(), observing()
    follow_lines(st, p, T0 + 20 * S)
    p.observing_until = p.next_check_at = None
    p.current_step = "confirm"
    p.awaiting = Awaiting(step="confirm", expects="confirm", min_role="on_call", since=T0 + 301 * S,
                          deadline=T0 + 901 * S, prompt="confirm the rollback holds",
                          exits=[Exit(kind="withdraw", means="end it here")])
    assert follow_lines(st, p, T0 + 302 * S) == [
        "  WAITING for confirm from on_call or above at step confirm: confirm the rollback holds",
        "    or withdraw (its starter, a higher role, or on_call): end it here",
        "  03:05:02  confirm: re-page at escalation level 2 in 9m59s",
    ]
    p.awaiting.seen_by = "olive"
    assert countdowns(p, T0 + 600 * S) == ["confirm: seen by olive; next reminder in 5m1s"]
    p.awaiting = p.awaiting.model_copy(update={"on_timeout": "proceed", "seen_by": None, "step": "decision_window"})
    assert countdowns(p, T0 + 600 * S) == ["decision_window: proceeds on its own in 5m1s unless someone decides"]


async def test_follow_a_real_rollback_through_the_cli(dev_env, store, sim, core_settings, paging_settings, http,
                                                      task_queue):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    inc = incident()
    d = Durations(observe=timedelta(seconds=3), check_interval=timedelta(milliseconds=500),
                  confirm_sla=timedelta(minutes=10))
    exe = str(Path(sys.executable).parent / "rollbackctl")
    env = clean_env(TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host, ROLLBACKCTL_TASK_QUEUE=task_queue)
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await dev_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="follow test", durations=d),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        proc = await asyncio.create_subprocess_exec(exe, "status", h.id, "--follow", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        seen: list[str] = []
        try:
            async def until_waiting():  # the wait, then its clocks
                while not any("confirm: re-page" in line for line in seen):
                    line = await proc.stdout.readline()
                    assert line, f"follow ended early: {seen}"
                    seen.append(line.decode().rstrip())

            await asyncio.wait_for(until_waiting(), 60)
        finally:
            proc.kill()
            await proc.wait()
        await poll_progress(h, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="test over"))
        await h.result()
    text = "\n".join(seen)
    assert "check ok: error_rate=" in text and "(<= 0.01) ok" in text, text
    assert "observe: " in text and " left, next check in " in text, text
    assert "or withdraw (its starter, a higher role, or on_call)" in text, text
    assert "confirm: re-page at escalation level 2 in 9m" in text, text


def test_status_renders_a_running_observation_a_wait_and_a_seen_page():
    """`status ID` (not --follow): the clocks line whether or not a human is awaited (a regression: the
    render once read the awaited step's fields while nothing was awaited, and crashed)."""
    from rollbackctl.cli.workflow_cmds import _render

    p = observing()
    p.observing_until = datetime.now(timezone.utc) + timedelta(minutes=4)
    out = _render(p)
    assert "clocks: observe: 3m5" in out or "clocks: observe: 4m" in out, out
    p.observing_until = None
    p.awaiting = Awaiting(step="confirm", expects="confirm", min_role="on_call", since=T0,
                          deadline=datetime.now(timezone.utc) + timedelta(minutes=9, seconds=30), prompt="confirm it",
                          seen_by="olive", seen_at=T0)
    out = _render(p)
    assert "seen in PagerDuty by olive" in out and "clocks: confirm: seen by olive; next reminder in 9m" in out, out
