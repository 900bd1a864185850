"""`rollbackctl audit verify`: the hash chain and the signatures of the trail; an edited, a deleted and a
swapped pair of records (edited in etcd directly) are found, named, and exit non-zero."""

from __future__ import annotations

import json

import pytest

from activities.requests import RequestVerifier
from activities.switch_store import record_hash
from activities import audit_verify
from tests.support.identity_helpers import Signers
from tests.support.store_helpers import req, run_cli
from contracts.requests import RequestApply


async def signed_set(store, signers, actor, name, value, n):
    st = await store.get(name)
    p = signers.request(actor, action="switch.set", target=f"switch:{name}", values={"value": value, "reason": "r"},
                        revision=st.revision)
    await RequestVerifier(store).apply(RequestApply(proof=p), f"change-{n}", f"change-{n}/run")


@pytest.fixture
async def trail(store):
    """init, operators, their keys, 3 signed changes and one unsigned (signing off) change."""
    s = Signers()
    await s.register(store)
    await signed_set(store, s, "rita", "hedge_max_leverage", 2.0, 1)
    await store.apply(req("rita", {"hedge_enabled": False}))
    await signed_set(store, s, "rita", "hedge_max_leverage", 1.5, 2)
    await signed_set(store, s, "alice", "withdrawal_enabled", False, 3)
    return store


async def records(store) -> list[tuple[str, dict]]:
    kvs, _ = await store.etcd.get_prefix(f"{store.prefix}audit/")
    return [(kv.key, json.loads(kv.value)) for kv in kvs]


async def put(store, key, rec) -> None:
    await store.etcd.put(key, json.dumps(rec, sort_keys=True, separators=(",", ":")).encode())


async def test_an_intact_trail_verifies(trail):
    rep = await audit_verify.verify_store(trail)
    assert rep.ok, rep.text()
    n = len(await records(trail))
    assert rep.records == n and rep.signatures == 3 and rep.signed_records == 3
    assert any("switch.set rita" in u for u in rep.unsigned)  # the change made with signing off
    assert rep.head.startswith(f"{n}:")
    assert (await audit_verify.verify_store(trail, expect_head=rep.head)).ok


async def test_an_acknowledgement_seen_in_pagerduty_is_an_observation_in_the_chain(trail):
    from contracts.changes import SeenRecord

    seen = SeenRecord(event_id="E1", event="acknowledged", by="Olive", at="2026-12-02T03:00:00Z",
                      dedup_key="rollback-x/p1:L1", source="rollback-x", awaiting="confirm")
    first = await trail.record_seen(seen)
    assert await trail.record_seen(seen) == first  # PagerDuty delivers at least once: recorded once
    rep = await audit_verify.verify_store(trail)
    assert rep.ok and rep.observations == 1 and not any("pagerduty:" in u for u in rep.unsigned), rep.text()
    assert "acknowledged in PagerDuty (seen" in rep.text()
    key, rec = (await records(trail))[-1]
    assert rec["changes"] == [] and rec["authority"] == "observed" and "not a signed decision" in rec["reason"]
    await put(trail, key, {**rec, "actor": "pagerduty:Mallory"})  # an edited observation breaks the chain too
    assert not (await audit_verify.verify_store(trail)).ok


async def test_an_edited_record_is_found(trail):
    recs = await records(trail)
    key, rec = recs[-3]
    await put(trail, key, {**rec, "reason": "nothing to see here"})
    rep = await audit_verify.verify_store(trail)
    assert not rep.ok and rep.broken.id == rec["id"] and "edited" in rep.broken.why


async def test_an_edited_record_with_every_hash_recomputed_is_found_by_its_signature(trail):
    """An attacker with write access rewrites the value and recomputes the chain and the head."""
    recs = await records(trail)
    i = next(i for i, (_, r) in enumerate(recs) if r.get("signatures") and r["changes"][0]["switch"] == "withdrawal_enabled")
    prev = recs[i - 1][1]["hash"]
    for key, rec in recs[i:]:
        if rec is recs[i][1]:
            rec = {**rec, "changes": [{**rec["changes"][0], "new": True}]}
        rec = {**rec, "prev_hash": prev}
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        await put(trail, key, rec)
    await trail.etcd.put(trail.head_key, json.dumps({"seq": len(recs), "hash": prev}).encode())
    rep = await audit_verify.verify_store(trail)
    assert not rep.ok and rep.broken.id == recs[i][1]["id"]
    assert "signed value False is not the recorded True" in rep.broken.why


async def test_a_deleted_record_is_found(trail):
    recs = await records(trail)
    await trail.etcd.delete_prefix(recs[3][0])
    rep = await audit_verify.verify_store(trail)
    assert not rep.ok and rep.broken.id == recs[3][1]["id"] and "missing" in rep.broken.why and "deleted" in rep.broken.why


async def test_the_last_record_deleted_is_found_by_the_head(trail):
    recs = await records(trail)
    await trail.etcd.delete_prefix(recs[-1][0])
    rep = await audit_verify.verify_store(trail)
    assert not rep.ok and "deleted from the end" in rep.broken.why


async def test_a_swapped_pair_is_found(trail):
    recs = await records(trail)
    (k1, r1), (k2, r2) = recs[-3], recs[-2]
    await put(trail, k1, r2)
    await put(trail, k2, r1)
    rep = await audit_verify.verify_store(trail)
    assert not rep.ok and rep.broken.id == r1["id"] and "reordered" in rep.broken.why


async def test_a_rewritten_tail_is_found_by_a_head_noted_earlier(trail):
    noted = (await audit_verify.verify_store(trail)).head
    recs = await records(trail)
    key, rec = recs[-1]
    rec = {**rec, "reason": "rewritten"}
    rec["hash"] = record_hash(rec)
    await put(trail, key, rec)
    await trail.etcd.put(trail.head_key, json.dumps({"seq": len(recs), "hash": rec["hash"]}).encode())
    assert not (await audit_verify.verify_store(trail)).ok  # its signature no longer matches the reason
    rep = await audit_verify.verify_store(trail, expect_head=noted)
    assert not rep.ok


async def test_the_cli_exits_non_zero_naming_the_first_broken_link(trail, etcd_server, prefix):
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix}
    r = run_cli("audit", "verify", env=env)
    assert r.code == 0 and "audit trail OK" in r.out and "3 signatures verified" in r.out, r.out + r.err
    key, rec = (await records(trail))[2]
    await put(trail, key, {**rec, "actor": "mallory"})
    r = run_cli("audit", "verify", env=env)
    assert r.code == audit_verify.BROKEN_EXIT and f"BROKEN at record {rec['id']}" in r.out, r.out + r.err
    r = run_cli("audit", "verify", "--json", env=env)
    assert r.json()["broken"]["id"] == rec["id"]
