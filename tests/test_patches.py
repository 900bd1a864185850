"""Every patch a workflow asks about is decided in its run's first activation (workflows/base.patches_first),
so no patch is first asked after a local activity's result, where a replay can answer it differently from
the run (the reason is in patches_first's docstring). Read from the source: a new `workflow.patched` call
that patches_first does not decide fails here, before a replay somewhere fails on it."""

from __future__ import annotations

from tests.support.patch_ids import asked, calls, decided_first
from workflows import base

ASKED_FIRST = {base.PAGER_OUTBOX, "flip-first", base.PATCHES_FIRST}  # asked at the top of `run`, before any await


def test_every_patch_asked_is_decided_first():
    decided = decided_first() | ASKED_FIRST
    ids = asked()
    assert len(ids) >= 15, ids
    missing = sorted((stem, p) for stem, p in ids if p not in decided)
    assert not missing, f"patches asked but not decided by patches_first: {missing}"


def test_every_workflow_with_a_run_decides_its_patches_first():
    # the interpreter's shared parts (the Runner and its mixins): each workflow that runs them decides their
    # patches first (RUNNER_PATCHES)
    runs = {stem for stem, _, _ in calls("patched")} - {"base", "runner", "gate", "gateway", "alerting"}
    firsts = {stem for stem, _, _ in calls("patches_first")} - {"base"}
    assert runs <= firsts, sorted(runs - firsts)
