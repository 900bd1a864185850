"""The seeded fault campaign (tests/support/chaos.py): one short seed in every `make test`; `make chaos`
runs a longer one (a random seed unless CHAOS_SEED is given) and prints it.

A seed that ever failed goes into REGRESSIONS (with what it found) and runs in every `make test`.
"""

from __future__ import annotations

import os

import pytest

from tests.support.chaos import Campaign, seed_from_env

pytestmark = pytest.mark.timeout(int(os.environ.get("CHAOS_TIMEOUT_S", "900")))

REGRESSIONS: list[tuple[int, int, str]] = [  # (seed, operations, what it found)
    (1, 6, "`status` while the Temporal server was down: a traceback and exit 1 (now one line, exit 5)"),
]


async def _campaign(seed: int, steps: int, max_down_s: float, tmp_path) -> None:
    c = Campaign(seed=seed, steps=steps, root=tmp_path, max_down_s=max_down_s)
    try:
        await __import__("asyncio").to_thread(c.start_stack)
        await c.run()
        report = await c.check()
    finally:
        print("\n".join(["", f"chaos seed {seed}: what happened"] + c.log[-400:]))
        c.close()
    print(f"\nchaos seed {seed}: {report['commands']} commands, {report['strikes']} process kills, "
          f"{report['applied']} changes applied at once, later outcomes {report['later']}, "
          f"{report['workflows']} rollbacks/degradations, {report['canaries']} canaries, "
          f"{report['incidents']} P0 incidents, {report['audit_records']} audit records, "
          f"exit codes {report['exits']}")
    assert not report["problems"], f"seed {seed}: " + "\n".join(report["problems"])


# `make chaos` (CHAOS_SEED set) runs its seed alone; `make test` runs seed 5, short, and the regressions.
# Seed 5 itself found (once, in CI, timing-dependent) a P0 that could never be resolved: Temporal killed
# as the hot wallet fired, the retried monitor resumed from an older heartbeat and never sent the clear
# (tests/test_incident_e2e.py::test_a_monitor_that_lost_its_state_still_clears_the_open_incidents).
CAMPAIGNS = [(seed_from_env(5), int(os.environ.get("CHAOS_STEPS", "10")), "this run's seed"),
             *([] if os.environ.get("CHAOS_SEED") else REGRESSIONS)]


@pytest.mark.parametrize("seed, steps, found", CAMPAIGNS, ids=[f"seed{s}" for s, _, _ in CAMPAIGNS])
async def test_a_seeded_campaign_keeps_every_invariant(seed, steps, found, tmp_path):
    await _campaign(seed, steps, float(os.environ.get("CHAOS_MAX_DOWN_S", "4")), tmp_path)
