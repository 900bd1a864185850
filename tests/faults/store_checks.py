"""Invariants of the switch store, read straight from etcd (no tests in here).

`check_store` asserts what must hold after any fault, whatever was or was not applied:
- the audit records form one unbroken hash chain, numbered 1..n, and the head points at the last;
- each change id appears in at most one audit record, and has a marker exactly when it does
  (the marker names that record): no half-applied change set;
- every switch's value is the `new` value of the last audit record that touched it, and carries
  that record's change id: no write outside a change set, no lost write.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from activities.switch_store import record_hash
from core.etcd import Etcd


async def dump(etcd: Etcd, prefix: str) -> list[tuple[str, bytes, int]]:
    kvs, _ = await etcd.get_prefix(prefix)
    return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]


async def check_store(etcd: Etcd, prefix: str) -> dict[str, Any]:
    """Assert the invariants; returns {"records": [...], "values": {...}} for further checks."""
    kvs, _ = await etcd.get_prefix(prefix)
    by = {kv.key[len(prefix):]: kv for kv in kvs}
    records = [json.loads(kv.value) for k, kv in sorted(by.items()) if k.startswith("audit/")]
    prev = None
    for i, rec in enumerate(records, start=1):
        assert rec["id"] == f"{i:012d}", f"audit record {i} is numbered {rec['id']}"
        assert rec["prev_hash"] == prev, f"audit record {rec['id']} does not link to its predecessor"
        assert record_hash(rec) == rec["hash"], f"audit record {rec['id']} was altered"
        prev = rec["hash"]
    head = json.loads(by["meta/audit_head"].value) if "meta/audit_head" in by else None
    if records:
        assert head == {"seq": len(records), "hash": prev}, f"head {head} is not the last record"

    ids = Counter(r["change_id"] for r in records if r.get("change_id"))
    twice = {c: n for c, n in ids.items() if n > 1}
    assert not twice, f"change ids applied more than once: {twice}"
    markers = {k[len("changes/"):]: json.loads(kv.value)["audit_id"] for k, kv in by.items() if k.startswith("changes/")}
    # `init` writes defaults under an "init-<time>" id without a marker (it is idempotent by itself)
    with_id = {r["change_id"]: r["id"] for r in records if r.get("change_id") and r.get("action") != "init"}
    assert markers == with_id, "change-id markers and audit records disagree"

    last: dict[str, dict] = {}
    for r in records:
        for c in r["changes"]:
            last[c["switch"]] = {"value": c["new"], "change_id": r["change_id"]}
    values = {}
    for k, kv in by.items():
        if not k.startswith("switches/"):
            continue
        name, rec = k[len("switches/"):], json.loads(kv.value)
        values[name] = rec["value"]
        want = last.get(name)
        assert want is not None, f"{name} was written without an audit record"
        assert (rec["value"], rec["change_id"]) == (want["value"], want["change_id"]), (
            f"{name} holds {rec['value']!r} from {rec['change_id']}, the audit says {want['value']!r} "
            f"from {want['change_id']}")
    return {"records": records, "values": values}
