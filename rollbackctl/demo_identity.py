"""Demo steps: Degradation Level 3 under the two-person rule (signed approvals), and `audit verify` on
the demo's trail and on a tampered copy of it.

Appended to rollbackctl.demo's STEPS when the demo imports this module.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import httpx

from rollbackctl.demo import Demo, step, wait_until

TAMPERED_PREFIX = "/perps-demo-tampered-copy/"


def _waits_at(demo: Demo, wid: str, step_name: str, timeout: float = 60.0) -> dict:
    return wait_until(f"{wid} to wait at {step_name}", lambda: demo.progress(wid),
                      lambda p: (p.get("awaiting") or {}).get("step") == step_name, timeout)


@step("Degradation Level 3 (maintenance mode) needs two super admins' signed approvals")
def level_3(demo: Demo) -> None:
    inc = f"DEMO-L3-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    wid = f"degrade-3-{inc}"
    demo.cli("degrade", "3", "--incident", inc, "--as", demo.super_admin, "--reason", "demo: database failover",
             "--observe", "3s", "--interval", "1s", "--drill")
    _waits_at(demo, wid, "second_approval")
    demo.cli("status", wid)
    print(f"\n{demo.super_admin} asked, so her own approval does not count twice:")
    demo.cli("confirm", wid, "--as", demo.super_admin, ok=(3,))
    demo.cli("confirm", wid, "--as", demo.second_super_admin, "--reason", "demo: agreed, DB failover under way")
    _waits_at(demo, wid, "confirm")
    r = httpx.post(f"{demo.core_url}/v1/orders", json={"symbol": "BTC", "notional_usd": 100, "side": "buy"},
                   headers=demo.core_auth, timeout=5)
    print(f"\nThe API now answers {r.status_code} ({r.json().get('error')}): maintenance mode.")
    demo.cli("confirm", wid, "--as", demo.super_admin, "--reason", "demo: maintenance holds")
    _waits_at(demo, wid, "fix")
    print("\nLeaving Level 3 re-enables a super-admin switch (global_api_enabled): two super admins again.")
    demo.cli("fix", wid, "--as", demo.super_admin, "--reference", "DB-42", "--tests-passed")
    demo.cli("fix", wid, "--as", demo.second_super_admin, "--reference", "DB-42", "--tests-passed")
    demo.cli("status", wid, "--follow")
    demo.cli("audit", "--limit", "2")


async def _copy_tampered(demo: Demo) -> str:
    """Copy the demo's audit trail (records, head, operators) under another prefix, one record edited."""
    from core.etcd import Etcd
    from core.settings import EtcdSettings

    s = EtcdSettings()
    async with Etcd.from_settings(s) as etcd:
        await etcd.delete_prefix(TAMPERED_PREFIX)
        kvs, _ = await etcd.get_prefix(s.prefix)
        keep = [kv for kv in kvs if kv.key[len(s.prefix):].split("/")[0] in ("audit", "meta", "operators")]
        records = [kv for kv in keep if kv.key.startswith(f"{s.prefix}audit/")]
        target = next((kv for kv in reversed(records) if json.loads(kv.value).get("signatures")), records[-1])
        edited = {**json.loads(target.value), "reason": "nothing happened here"}
        for kv in keep:
            value = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() if kv is target else kv.value
            await etcd.put(TAMPERED_PREFIX + kv.key[len(s.prefix):], value)
        return json.loads(target.value)["id"]


async def _drop_copy() -> None:
    from core.etcd import Etcd
    from core.settings import EtcdSettings

    async with Etcd.from_settings(EtcdSettings()) as etcd:
        await etcd.delete_prefix(TAMPERED_PREFIX)


@step("The audit trail verifies (hash chain + signatures); a tampered copy of it does not")
def verify_audit(demo: Demo) -> None:
    demo.cli("audit", "verify")
    edited = asyncio.run(_copy_tampered(demo))
    print(f"\nA copy of the trail under {TAMPERED_PREFIX} with the reason of record {edited} edited in etcd:")
    try:
        demo.cli("audit", "verify", ok=(7,), env={"ROLLBACKCTL_ETCD_PREFIX": TAMPERED_PREFIX})
    finally:
        asyncio.run(_drop_copy())
