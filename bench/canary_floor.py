"""The floor under the 10-day canary's wall time (bench/canary.py, issue 21 item 4): the same number of
5-minute waits the canary makes for its health checks, with nothing of ours in them, on the same
time-skipping test server and the same SDK, in the same run.

- timers only: `workflow.sleep(300)` N times: one workflow task per timer, the test server skipping to it;
- timer + local activity: the same with a local activity that returns at once after each, which is the
  shape of the canary's health check (core.read_health runs as a local activity) without its HTTP read,
  its pydantic models or its decisions.

Whatever the canary costs beyond the second is ours; the second is the SDK's and the test server's.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

CHECK_EVERY_S = 300


@activity.defn(name="bench_floor_noop")
async def noop() -> int:
    return 0


@workflow.defn(name="BenchCanaryFloor")
class CanaryFloor:
    @workflow.run
    async def run(self, checks: int, local_activity: bool) -> int:
        for _ in range(checks):
            await workflow.sleep(CHECK_EVERY_S)
            if local_activity:
                await workflow.execute_local_activity(noop, start_to_close_timeout=timedelta(seconds=10))
        return checks
