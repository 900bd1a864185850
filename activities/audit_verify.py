"""`rollbackctl audit verify`: walk the audit trail's hash chain and signatures; report the first broken link.

Checked, record by record in key order (audit/<seq>):
- the sequence has no gap and the record's id is its key's (a deleted or moved record);
- `prev_hash` is the previous record's hash (an edited, deleted or reordered record before it);
- `hash` is the SHA-256 of the record's canonical JSON without `hash` (an edited record);
- each signature behind it verifies with a key the trail registered for its operator before it
  (operator.add / operator.rotate_key records carry public keys, so the trail verifies by itself);
  a direct request's signed content is the record's change, a workflow's requests are for that
  workflow, and a nonce is never used by two different requests' owners;
- `meta/audit_head` names the last record and its hash (records deleted from the end).

What it cannot see on its own: someone with etcd write access who rewrites the whole tail,
recomputing every hash, and adds only unsigned records. Signed records cannot be forged that way;
unsigned ones are listed; and `--expect-head SEQ:HASH` checks a head noted earlier outside etcd.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from activities.switch_store import record_hash
from core import identity
from contracts.requests import change_request_workflow_id

BROKEN_EXIT = 7


class Broken(BaseModel):
    id: str
    why: str


class Report(BaseModel):
    ok: bool
    records: int
    signatures: int = 0
    signed_records: int = 0
    unsigned: list[str] = []  # "id action actor" of records changed by a person without a signature
    break_glass: list[str] = []
    observations: int = 0  # records of what PagerDuty said (an alert acknowledged: seen), which change nothing
    head: str | None = None  # "seq:hash" of the last record: keep it to check later with --expect-head
    broken: Broken | None = None

    def text(self) -> str:
        if self.broken is not None:
            return (f"audit trail BROKEN at record {self.broken.id}: {self.broken.why}\n"
                    f"({self.records} records before it verified)")
        lines = [f"audit trail OK: {self.records} records, hash chain intact, {self.signatures} signatures verified "
                 f"on {self.signed_records} records", f"head {self.head}  (keep it: --expect-head checks it later)"]
        if self.break_glass:
            lines.append("BREAK-GLASS records: " + "; ".join(self.break_glass))
        if self.observations:
            lines.append(f"{self.observations} records of alerts acknowledged in PagerDuty (seen; they change "
                         "nothing and decide nothing)")
        if self.unsigned:
            lines.append(f"{len(self.unsigned)} records by people carry no signature (signing off, before keys, or "
                         "from a workflow that does not attach them yet): " + ", ".join(self.unsigned[:10])
                         + (" ..." if len(self.unsigned) > 10 else ""))
        return "\n".join(lines)


def _check_signatures(rec: dict[str, Any], keys: dict[str, dict[str, str]], nonces: dict[str, str]) -> str | None:
    """Why the signatures of `rec` do not hold up, or None."""
    direct_nonce = next((x.get("request", {}).get("nonce") for x in rec.get("signatures") or []
                         if x.get("request", {}).get("workflow_id") is None), None)
    # a direct change's second approval is bound to the change-request workflow that carried it
    source = rec.get("source") if direct_nonce is None else change_request_workflow_id(direct_nonce)
    for raw in rec.get("signatures") or []:
        try:
            p = identity.Proof.model_validate(raw)
        except ValidationError:
            return "a signature entry is malformed"
        r = p.request
        pk = keys.get(r.actor, {}).get(p.key_id)
        if pk is None:
            return f"{r.actor}'s {r.action} is signed with key {p.key_id}, which the trail never registered for {r.actor}"
        if not identity.signature_valid(p, pk):
            return f"{r.actor}'s signature on {r.action} does not verify: the record or its signature was edited"
        owner = r.workflow_id or f"request:{r.nonce}"
        if r.workflow_id is not None and source != r.workflow_id:
            return f"{r.actor}'s {r.action} was signed for {r.workflow_id}, but the record is {source}'s"
        if nonces.setdefault(r.nonce, owner) != owner:
            return f"nonce {r.nonce} of {r.actor}'s {r.action} was already used by {nonces[r.nonce]}"
    direct = [identity.Proof.model_validate(x) for x in rec.get("signatures") or []
              if x.get("request", {}).get("workflow_id") is None]
    if direct:
        r = direct[0].request
        if r.actor != rec.get("actor"):
            return f"the record's actor {rec.get('actor')} did not sign its request ({r.actor} did)"
        if r.action == "switch.set":
            ch = rec.get("changes") or [{}]
            if r.target != f"switch:{ch[0].get('switch')}" or r.values.get("reason") != rec.get("reason"):
                return "the signed request is not this record's change (switch or reason differ)"
            if identity.canonical_json(r.values.get("value")) != identity.canonical_json(ch[0].get("new")):
                return f"the signed value {r.values.get('value')!r} is not the recorded {ch[0].get('new')!r}"
        elif r.action == "emergency.degrade":  # the emergency lane's level: its switch set, as the manual has it
            from manual import emergency

            try:
                want = emergency.move(r.action, r.target, r.values).changes
            except emergency.NotEmergency as e:
                return f"the signed request is not an emergency move: {e}"
            got = {c.get("switch"): c.get("new") for c in rec.get("changes") or []}
            if identity.canonical_json(got) != identity.canonical_json(want) or r.values.get("reason") != rec.get("reason"):
                return f"the signed {r.target} is not this record's change (switch set or reason differ)"
        elif r.action in ("operator.approve_passkey", "operator.remove_passkey"):
            op = rec.get("operator") or {}
            pk = op.get("passkey") or {}
            named = ("credential_id", "public_key", "code") if r.action == "operator.approve_passkey" else ("credential_id",)
            if r.target != f"operator:{op.get('name')}" or any(r.values.get(k) != pk.get(k) for k in named):
                return "the signed request is not this record's passkey change (operator or passkey differ)"
        elif r.action.startswith("operator."):
            op = rec.get("operator") or {}
            if r.target != f"operator:{op.get('name')}" or r.values.get("public_key") != op.get("public_key"):
                return "the signed request is not this record's operator change"
    return None


def verify(records: list[tuple[str, dict[str, Any]]], head: dict[str, Any] | None,
           expect_head: str | None = None) -> Report:
    """`records`: (key, value) of every audit record in key order; `head`: meta/audit_head's value."""
    rep = Report(ok=False, records=0)
    keys: dict[str, dict[str, str]] = {}  # operator -> key id -> public key, as the trail registered them
    nonces: dict[str, str] = {}
    prev: str | None = None
    want_seq, want_hash = (None, None)
    if expect_head:
        s, _, h = expect_head.partition(":")
        want_seq, want_hash = f"{int(s):012d}", h
    seen_expected = False
    for i, (key, rec) in enumerate(records, start=1):
        seq = key.rsplit("/", 1)[-1]
        if seq != f"{i:012d}":
            why = (f"record {i:012d} is missing (the next is {seq}): deleted" if seq.isdigit() and int(seq) > i
                   else f"found {seq} where {i:012d} belongs")
            rep.broken = Broken(id=f"{i:012d}", why=why)
            return rep
        if rec.get("id") != seq:
            rep.broken = Broken(id=seq, why=f"the record under this key says it is {rec.get('id')}: moved or reordered")
            return rep
        if rec.get("prev_hash") != prev:
            rep.broken = Broken(id=seq, why="its prev_hash is not the hash of the record before it: a record before it "
                                            "was edited, deleted or reordered")
            return rep
        if record_hash(rec) != rec.get("hash"):
            rep.broken = Broken(id=seq, why="its content does not match its hash: edited")
            return rep
        why = _check_signatures(rec, keys, nonces)
        if why:
            rep.broken = Broken(id=seq, why=why)
            return rep
        n = len(rec.get("signatures") or [])
        rep.signatures += n
        rep.signed_records += 1 if n else 0
        if rec.get("authority") == "observed":  # seen in PagerDuty: an observation, not a decision
            rep.observations += 1
        elif not n and rec.get("role") not in ("system", "service") and rec.get("actor") not in ("system", "monitor"):
            rep.unsigned.append(f"{seq} {rec.get('action')} {rec.get('actor')}")
        if rec.get("break_glass"):
            bg = rec["break_glass"]
            rep.break_glass.append(f"{seq} by {bg.get('by')}: {bg.get('reason')}")
        op = rec.get("operator") or {}
        if rec.get("action") == "operator.approve_passkey" and (op.get("passkey") or {}).get("key"):
            try:  # a passkey approved: decisions it signs from now on verify from the trail alone
                keys.setdefault(op["name"], {})[identity.key_id(op["passkey"]["key"])] = op["passkey"]["key"]
            except ValueError:
                rep.broken = Broken(id=seq, why="it approves a malformed passkey")
                return rep
        if rec.get("action") in ("operator.add", "operator.rotate_key") and op.get("public_key"):
            try:
                keys.setdefault(op["name"], {})[identity.key_id(op["public_key"])] = op["public_key"]
            except ValueError:
                rep.broken = Broken(id=seq, why="it registers a malformed public key")
                return rep
        if want_seq == seq:
            seen_expected = True
            if rec.get("hash") != want_hash:
                rep.broken = Broken(id=seq, why=f"its hash is not the {want_hash[:16]}... noted earlier: rewritten")
                return rep
        prev = rec.get("hash")
        rep.records = i
    last = f"{len(records):012d}"
    if head is None:
        if records:
            rep.broken = Broken(id=last, why="meta/audit_head is missing")
            return rep
    elif int(head.get("seq", -1)) != len(records) or head.get("hash") != prev:
        rep.broken = Broken(id=last, why=f"meta/audit_head names record {int(head.get('seq', -1)):012d} with another "
                                         f"hash than the last record {last}: records were deleted from the end, or "
                                         "the head was edited")
        return rep
    if want_seq is not None and not seen_expected:
        rep.broken = Broken(id=want_seq, why="the record noted earlier (--expect-head) is gone")
        return rep
    rep.ok = True
    rep.head = f"{len(records)}:{prev}" if records else None
    return rep


async def verify_store(store, expect_head: str | None = None) -> Report:
    """Read the audit prefix and the head (one consistent etcd revision) and verify them."""
    kvs, _ = await store.etcd.get_prefix(store.prefix)
    audit = f"{store.prefix}audit/"
    records = [(kv.key, json.loads(kv.value)) for kv in kvs if kv.key.startswith(audit)]
    head_kv = next((kv for kv in kvs if kv.key == store.head_key), None)
    return verify(records, json.loads(head_kv.value) if head_kv else None, expect_head)
