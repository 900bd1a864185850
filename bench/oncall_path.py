"""A new on-call's path, from the page to a confirmed rollback, with the runbook's commands as typed.

The runbook (docs/runbook.md) is all the on-call reads: "0. Look first", "1. Choose severity and
level", "2. Watch", "3. Confirm". Internal fills fail (the simulator's error rate at 3%, over the
manual's 1%); the on-call looks, starts a critical cross-module rollback with the drill timings of
the runbook's section 6 (a 30 s observation instead of 5 minutes), follows it and confirms (once
HL_MODE is applied the failing internal path is out of use: the simulator's error rate is cleared). Each
command runs as a real CLI process against the bench stack (signed, as in production); the figure
is what the machine takes between the on-call's keystrokes, and what the on-call types:
- commands, characters typed (the command lines exactly as the runbook writes them, with its
  placeholders filled: incident INC-123, operator oscar, a short reason);
- each command's wall time, start -> HL_MODE applied, and page -> confirmed (without thinking time:
  the observation dominates it).
`status --follow` is run as `status --json` polls (the follow prints the same view until a decision is
awaited), its characters counted as the runbook writes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")


async def run(st, observe_s: int = 30) -> dict:
    import httpx

    inc = f"INC-{uuid.uuid4().hex[:6]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))}, **st.env}
    typed: list[str] = []
    timings: dict[str, float] = {}

    async def cli(line: str, name: str, count: bool = True) -> subprocess.CompletedProcess:
        if count:
            typed.append(line)
        t = time.monotonic()
        p = await asyncio.to_thread(subprocess.run, [ROLLBACKCTL, *shlex.split(line)[1:]], env=env,
                                    capture_output=True, text=True, timeout=120)
        timings[name] = round((time.monotonic() - t) * 1000)
        assert p.returncode == 0, (line, p.returncode, p.stdout[-500:], p.stderr[-500:])
        return p

    from contracts.changes import ChangeSetRequest, SwitchChange

    # launched: internalization on (the state a cross-module rollback takes away)
    await st.store.apply(ChangeSetRequest(change_id=f"bench-launch-{inc}", actor="alice", reason="bench: launched",
                                          changes=[SwitchChange(switch="global_betting_enabled", value=True),
                                                   SwitchChange(switch="routing_mode", value="NORMAL_MODE")]))
    async with httpx.AsyncClient() as http:
        await http.post(f"{st.core.url}/sim/faults", json={"error_rate": 0.03})
        try:
            paged = time.monotonic()  # the page (the team's error-rate alert) reaches the on-call now
            await cli("rollbackctl status", "look_status")
            await cli("rollbackctl switch list", "look_switches")
            t_start = time.monotonic()
            await cli(f"rollbackctl rollback start --severity critical_path_failure --scope cross_module --incident "
                      f"{inc} --as oscar --reason \"internal fills failing, error rate 3%\" --observe {observe_s}s "
                      "--interval 5s", "rollback_start")
            applied_ms = None
            typed.append(f"rollbackctl status {inc} --follow")
            while True:
                p = await cli(f"rollbackctl status {inc} --json", "status_json", count=False)
                view = json.loads(p.stdout)
                if applied_ms is None and view.get("applied"):
                    applied_ms = round((time.monotonic() - t_start) * 1000)
                    # HL_MODE took the failing internal path out of use: the error rate falls back
                    await http.delete(f"{st.core.url}/sim/faults")
                aw = view.get("awaiting")
                if aw is not None and aw.get("expects") == "confirm" and aw.get("step") == "confirm":
                    break
                assert time.monotonic() - t_start < observe_s + 120, f"no confirmation asked for: {view.get('status')}"
                await asyncio.sleep(1.0)  # as --follow does (bounded by the observation)
            await cli(f"rollbackctl confirm {inc} --as oscar", "confirm")
            confirmed_s = round(time.monotonic() - paged, 1)
            for _ in range(50):  # the confirmation taken: it goes on to wait for the fix (bounded)
                p = await cli(f"rollbackctl status {inc} --json", "status_json", count=False)
                if (json.loads(p.stdout).get("awaiting") or {}).get("expects") == "fix":
                    break
            else:
                v = json.loads(p.stdout)
                raise AssertionError(f"the rollback did not go on to wait for the fix: {v.get('status')}, "
                                     f"{v.get('current_step')}, {v.get('awaiting')}, {v.get('detail')}")
        finally:
            await http.delete(f"{st.core.url}/sim/faults")
    return {
        "commands": len(typed), "characters_typed": sum(len(t) for t in typed), "typed": typed,
        "command_ms": timings, "start_to_hl_mode_applied_ms_upper_bound": applied_ms,
        "page_to_confirmed_s": confirmed_s, "observation_s": observe_s,
        "machine_s_besides_observation": round(confirmed_s - observe_s, 1),
    }
