"""The audited switch store over etcd.

Key layout (other tools read it directly; keep it exactly):
    <prefix>switches/<name>   {"value", "updated_at", "updated_by", "change_id"}
    <prefix>audit/<seq>       {"id", "at", "actor", "role", "reason", "source", "changes": [...], ...}
    <prefix>operators/<name>  {"name", "role", "added_at", "added_by", "public_key"}
    <prefix>changes/<id>      the audit id a change id produced (idempotency marker)
    <prefix>meta/audit_head   {"seq", "hash"}: the last audit record (sequence and hash chain)
    <prefix>nonces/<nonce>    {"owner", "actor", "at"}: a signed request's nonce, used once

Every write is ONE etcd transaction holding the values, the audit record, the new head and the
change-id marker (and the nonces of the signed requests behind it), guarded by the mod_revision of
each touched key and of the head: a change set is applied whole or not at all, no concurrent writer
is lost, retrying the same change id is a no-op, and a nonce is never accepted twice. Audit ids are
a zero-padded sequence, so `audit/` sorts in commit order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from datetime import datetime, timezone
from typing import Any

from contracts.changes import (
    ActorKind,
    AuditRecord,
    Authority,
    ChangeRecord,
    ChangeSetRequest,
    ChangeSetResult,
    Operator,
    Passkey,
    SeenRecord,
    Snapshot,
    SwitchState,
)
from contracts.errors import ErrorKind
from contracts.roles import Role
from core import identity
from core.etcd import KV, Compare, Delete, Etcd, EtcdAuthError, EtcdUnavailable, Put
from manual import approvals, switches
from manual.roles import MONITOR_IDENTITY, RESERVED_NAMES


class StoreError(Exception):
    """A refused or failed store operation; `error_kind` is how it crosses the activity boundary."""

    exit_code = 1
    kind = "error"
    error_kind: ErrorKind | None = None


# What a prefix may be marked (`rollbackctl init --environment`): drills refuse a production one.
ENVIRONMENTS = ("dev", "staging", "production")


class InvalidChange(StoreError):
    exit_code = 2
    kind = "invalid"
    error_kind = ErrorKind.INVALID_CHANGE


class PermissionDenied(StoreError):
    exit_code = 3
    kind = "permission"
    error_kind = ErrorKind.PERMISSION_DENIED


class Conflict(StoreError):
    exit_code = 4
    kind = "conflict"
    error_kind = ErrorKind.CONFLICT


class Contended(Conflict):
    """The store stayed contended through every compare-and-swap attempt: nothing was written, a retry may succeed."""


class NotInitialised(StoreError):
    exit_code = 2
    kind = "not_initialised"
    error_kind = ErrorKind.NOT_INITIALISED


def application_error(e: Exception) -> Exception:
    """`e` as the activity raises it: a store refusal, a refused signature or an etcd error becomes an
    ApplicationError of its kind (retryable only when the store was contended or etcd unavailable)."""
    from temporalio.exceptions import ApplicationError  # here: `switch list` does not pay for temporalio

    if isinstance(e, StoreError) and e.error_kind is not None:
        return ApplicationError(str(e), type=e.error_kind.value, non_retryable=not isinstance(e, Contended))
    if isinstance(e, identity.Refused):
        kind = ErrorKind.CONFLICT if e.kind is identity.Refusal.STALE else ErrorKind.PERMISSION_DENIED
        return ApplicationError(str(e), type=kind.value, non_retryable=True)
    if isinstance(e, EtcdAuthError):
        return ApplicationError(str(e), type=ErrorKind.PERMISSION_DENIED.value, non_retryable=True)
    if isinstance(e, EtcdUnavailable):
        return ApplicationError(str(e), type=ErrorKind.STORE_UNAVAILABLE.value)
    return e


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _passkey_key(pending: dict[str, Any]) -> str:
    """The key text of a registered passkey (core/identity.passkey_text), from its COSE public key and the
    console it was registered on; "" when the registration predates them (it then signs in only)."""
    if not pending.get("rp_id") or not pending.get("origin"):
        return ""
    try:
        from webauthn.helpers import decode_credential_public_key
        from webauthn.helpers.exceptions import WebAuthnException

        cose = decode_credential_public_key(identity._unb64u(pending["public_key"], "public key"))
        if int(cose.alg) == identity.ES256:
            raw = bytes(cose.x) + bytes(cose.y)
        elif int(cose.alg) == identity.EDDSA:
            raw = bytes(cose.x)
        else:
            raise InvalidChange(f"passkey algorithm {int(cose.alg)} is not ES256 or EdDSA")
        return identity.passkey_text(credential_id=pending["credential_id"], alg=int(cose.alg), raw_key=raw,
                                     rp_id=str(pending["rp_id"]), origin=str(pending["origin"]))
    except (ValueError, KeyError, TypeError, AttributeError, WebAuthnException) as e:
        raise InvalidChange(f"the pending passkey's public key cannot be read: {e}") from None


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "revision")}
    return hashlib.sha256(_dumps(body)).hexdigest()


MAX_ATTEMPTS = 50
# Keys read in one round trip before a write (SwitchStore._read_set): a key's KV, None when absent.
ReadSet = dict[str, "KV | None"]


class SwitchStore:
    def __init__(self, etcd: Etcd, prefix: str = "/perps/"):
        self.etcd = etcd
        self.prefix = prefix

    # -- keys -------------------------------------------------------------------------------
    def switch_key(self, name: str) -> str:
        return f"{self.prefix}switches/{name}"

    def operator_key(self, name: str) -> str:
        return f"{self.prefix}operators/{name}"

    @property
    def head_key(self) -> str:
        return f"{self.prefix}meta/audit_head"

    def environment_key(self) -> str:
        return f"{self.prefix}meta/environment"

    async def environment(self) -> str | None:
        """What `init --environment` marked this prefix (dev, staging, production), or None."""
        kv = await self.etcd.get(self.environment_key())
        return kv.value.decode() if kv is not None else None

    async def mark_environment(self, env: str) -> bool:
        """Mark the prefix once (True: written now). A different mark already there is a Conflict: the mark
        is what keeps drills off production, so init never changes it."""
        if env not in ENVIRONMENTS:
            raise InvalidChange(f"environment: one of {', '.join(ENVIRONMENTS)}, not {env!r}")
        ok, _ = await self.etcd.txn([Compare(self.environment_key(), "create", "==", 0)],
                                    [Put(self.environment_key(), env.encode())])
        if ok:
            return True
        now = await self.environment()
        if now != env:
            raise Conflict(f"{self.prefix} is marked {now} already; init never changes the mark (an administrator "
                           f"deletes {self.environment_key()} first)")
        return False

    def pending_passkey_key(self, credential_id: str) -> str:
        """A passkey registered in the console and not yet approved (the console's own keys: it may write
        `<prefix>console/` and nothing else)."""
        return f"{self.prefix}console/pending/{credential_id}"

    def marker_key(self, change_id: str) -> str:
        return f"{self.prefix}changes/{change_id}"

    def audit_key(self, seq: int) -> str:
        return f"{self.prefix}audit/{seq:012d}"

    def nonce_key(self, nonce: str) -> str:
        return f"{self.prefix}nonces/{nonce}"

    # -- reads ------------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        kvs, rev = await self.etcd.get_prefix(f"{self.prefix}switches/")
        found = {kv.key.rsplit("/", 1)[1]: kv for kv in kvs}
        out: dict[str, SwitchState] = {}
        for sw in switches.SWITCHES:
            kv = found.get(sw.name)
            if kv is None:
                out[sw.name] = SwitchState(name=sw.name, value=None)
            else:
                out[sw.name] = SwitchState(name=sw.name, revision=kv.mod_revision, **json.loads(kv.value))
        return Snapshot(revision=rev, switches=out)

    async def get(self, name: str) -> SwitchState:
        switches.get(name)
        kv = await self.etcd.get(self.switch_key(name))
        if kv is None:
            return SwitchState(name=name, value=None)
        return SwitchState(name=name, revision=kv.mod_revision, **json.loads(kv.value))

    async def operators(self) -> list[Operator]:
        kvs, _ = await self.etcd.get_prefix(f"{self.prefix}operators/")
        return [Operator.model_validate_json(kv.value) for kv in kvs]

    async def operator(self, name: str, snap: ReadSet | None = None) -> Operator | None:
        kv = await self._get(self.operator_key(name), snap)
        return Operator.model_validate_json(kv.value) if kv else None

    async def _get(self, key: str, snap: ReadSet | None = None) -> KV | None:
        """`key` from the keys read beforehand (`_read_set`) when they hold it, else from etcd."""
        if snap is not None and key in snap:
            return snap[key]
        return await self.etcd.get(key)

    async def audit(self, limit: int | None = None) -> list[AuditRecord]:
        """Audit records, oldest first (the last `limit` of them)."""
        kvs, _ = await self.etcd.get_prefix(f"{self.prefix}audit/")
        if limit is not None:
            kvs = kvs[-limit:] if limit > 0 else []
        return [AuditRecord(**json.loads(kv.value), revision=kv.mod_revision) for kv in kvs]

    async def audit_after(self, seq: int, limit: int = 100) -> list[AuditRecord]:
        """Audit records after sequence `seq`, oldest first (at most `limit`)."""
        kvs, _ = await self.etcd.get_from(self.audit_key(seq + 1), f"{self.prefix}audit/", limit)
        return [AuditRecord(**json.loads(kv.value), revision=kv.mod_revision) for kv in kvs]

    async def head_seq(self) -> int:
        _, seq, _ = await self._head()
        return seq

    async def _head(self, snap: ReadSet | None = None) -> tuple[KV | None, int, str | None]:
        kv = await self._get(self.head_key, snap)
        if kv is None:
            return None, 0, None
        h = json.loads(kv.value)
        return kv, int(h["seq"]), h.get("hash")

    async def _replayed(self, change_id: str, snap: ReadSet | None = None) -> ChangeSetResult | None:
        kv = await self._get(self.marker_key(change_id), snap)
        if kv is None:
            return None
        audit_id = json.loads(kv.value)["audit_id"]
        rec_kv = await self.etcd.get(f"{self.prefix}audit/{audit_id}")
        rec = json.loads(rec_kv.value) if rec_kv else {"changes": []}
        return ChangeSetResult(
            change_id=change_id,
            audit_id=audit_id,
            revision=kv.mod_revision,
            changes=[ChangeRecord(**c) for c in rec["changes"]],
            replayed=True,
        )

    async def nonce_owner(self, nonce: str, snap: ReadSet | None = None) -> str | None:
        kv = await self._get(self.nonce_key(nonce), snap)
        return json.loads(kv.value).get("owner") if kv else None

    async def _nonce_ops(self, proofs: list[identity.Proof], owner: str, at: str,
                         snap: ReadSet | None = None) -> tuple[list[Put], list[Compare]]:
        """Record each proof's nonce (guarded: created by this transaction) unless `owner` recorded it
        already (a retry, or a later change set of the same workflow, in any of its continue-as-new
        runs); another owner's: refused."""
        puts: list[Put] = []
        guards: list[Compare] = []
        for p in proofs:
            n = p.request.nonce
            if any(x.key == self.nonce_key(n) for x in puts):
                continue
            have = await self.nonce_owner(n, snap)
            if have == owner:
                continue
            if have is not None:
                raise PermissionDenied(str(identity.Refused(
                    identity.Refusal.REUSED_NONCE, f"nonce {n} of {p.request.actor}'s {p.request.action} was used "
                                                   f"by {have}: a replayed request")))
            puts.append(Put(self.nonce_key(n), _dumps({"owner": owner, "actor": p.request.actor, "at": at})))
            guards.append(Compare(self.nonce_key(n), "create", "==", 0))
        return puts, guards

    @staticmethod
    def _signed_fields(proofs: list[identity.Proof], break_glass: Any = None) -> dict[str, Any]:
        """What an audit record says about the signed requests behind it."""
        out: dict[str, Any] = {}
        if proofs:
            out["signatures"] = [p.model_dump(mode="json", exclude_none=True) for p in proofs]
        if break_glass is not None:
            out["break_glass"] = break_glass.model_dump() if hasattr(break_glass, "model_dump") else break_glass
        return out

    # -- the one write path -----------------------------------------------------------------
    async def _commit(
        self,
        record: dict[str, Any],
        puts: list[Put],
        guards: list[Compare],
        change_id: str | None,
        snap: ReadSet | None = None,
    ) -> tuple[bool, int, str]:
        """Try once: values + audit record + head (+ marker) in one transaction."""
        head_kv, seq, prev_hash = await self._head(snap)
        seq += 1
        audit_id = f"{seq:012d}"
        rec = {**record, "id": audit_id, "prev_hash": prev_hash}
        rec["hash"] = record_hash(rec)
        ops = [*puts, Put(self.audit_key(seq), _dumps(rec)), Put(self.head_key, _dumps({"seq": seq, "hash": rec["hash"]}))]
        cmp = [
            *guards,
            Compare(self.head_key, "mod", "==", head_kv.mod_revision) if head_kv else Compare(self.head_key, "create", "==", 0),
        ]
        if change_id is not None:
            ops.append(Put(self.marker_key(change_id), _dumps({"audit_id": audit_id})))
            cmp.append(Compare(self.marker_key(change_id), "create", "==", 0))
        ok, rev = await self.etcd.txn(cmp, ops)
        return ok, rev, audit_id

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(0.002 * (2 ** min(attempt, 6)), 0.1) * random.random())

    # -- permission -----------------------------------------------------------------------------
    async def _actor_role(self, req: ChangeSetRequest, snap: ReadSet | None = None) -> str:
        if req.actor_kind is ActorKind.SERVICE:
            if req.actor != MONITOR_IDENTITY:
                raise PermissionDenied(f"unknown service identity {req.actor!r}")
            if req.authority is not Authority.PREAPPROVED:
                raise PermissionDenied("the monitor may only take the manual's pre-approved moves")
            return "service"
        if req.actor in RESERVED_NAMES:
            raise PermissionDenied(f"{req.actor!r} is a reserved service name, not an operator")
        op = await self.operator(req.actor, snap)
        if op is None:
            raise PermissionDenied(f"unknown operator {req.actor!r} (see `rollbackctl operator list`)")
        return op.role.value

    async def _authorize(self, req: ChangeSetRequest, role: str, parsed: dict[str, Any],
                         snap: ReadSet | None = None) -> None:
        if req.authority is Authority.OWNER:
            r = Role(role)
            for name in parsed:
                need = switches.get(name).permission
                if not r.at_least(need):
                    raise PermissionDenied(
                        f"{req.actor} is {r.value}; {name} is owned by {need.value} "
                        f"(a {need.title} or above may change it)"
                    )
        elif req.authority is Authority.PREAPPROVED:
            if role != "service" and not Role(role).at_least(Role.ON_CALL):
                raise PermissionDenied(f"{req.actor} is {role}; pre-approved moves need on_call or above")
            for name, value in parsed.items():
                if name in approvals.SUPER_ADMIN_ONLY:
                    if role != Role.SUPER_ADMIN.value:
                        raise PermissionDenied(f"{name} needs a super_admin in both directions; {req.actor} is {role}")
                    continue
                if not approvals.is_preapproved(name, value):
                    allowed = ", ".join(switches.get(name).render(v) for v in approvals.PREAPPROVED[name])
                    raise PermissionDenied(
                        f"{name}={switches.get(name).render(value)} is not a pre-approved move "
                        f"(pre-approved: {allowed}); it needs its owner role"
                    )
        else:  # PLAN
            if not req.approved_by:
                raise PermissionDenied("a plan change set needs approved_by")
            approver = await self.operator(req.approved_by, snap)
            if approver is None:
                raise PermissionDenied(f"approver {req.approved_by!r} is not an operator")
            need = approvals.plan_owner_role(list(parsed))
            if not approver.role.at_least(need):
                raise PermissionDenied(
                    f"approver {approver.name} is {approver.role.value}; this plan touches switches owned by {need.value}"
                )

    def _parse(self, req: ChangeSetRequest) -> dict[str, Any]:
        parsed: dict[str, Any] = {}
        for ch in req.changes:
            try:
                sw = switches.get(ch.switch)
            except switches.UnknownSwitch as e:
                raise InvalidChange(str(e)) from None
            if ch.switch in parsed:
                raise InvalidChange(f"{ch.switch} appears twice in one change set")
            try:
                parsed[ch.switch] = sw.parse(ch.value)
            except switches.SwitchValueError as e:
                raise InvalidChange(str(e)) from None
        if req.expected:
            for name, v in req.expected.items():
                if name not in parsed:
                    raise InvalidChange(f"expected value given for {name}, which the change set does not touch")
                try:
                    switches.get(name).parse(v)
                except (switches.UnknownSwitch, switches.SwitchValueError) as e:
                    raise InvalidChange(f"expected value: {e}") from None
        return parsed

    async def _read_set(self, req: ChangeSetRequest) -> tuple[ReadSet, list[KV]]:
        """Everything `apply` reads, in one round trip at one revision: the change's marker, the actor's and
        approver's roster entries, the audit head, the proofs' nonces, and the switches. (Five to eight
        sequential reads before: most of an audited change's latency; issue 21, propagation.)"""
        keys = [self.marker_key(req.change_id), self.head_key, self.operator_key(req.actor),
                *([self.operator_key(req.approved_by)] if req.approved_by else []),
                *dict.fromkeys(self.nonce_key(p.request.nonce) for p in req.proofs)]
        singles, ranges, _ = await self.etcd.read(keys, [f"{self.prefix}switches/"])
        return singles, ranges[f"{self.prefix}switches/"]

    async def apply(self, req: ChangeSetRequest) -> ChangeSetResult:
        """Validate the whole change set, then write it as one transaction (or nothing)."""
        parsed = self._parse(req)
        role: str | None = None
        for attempt in range(MAX_ATTEMPTS):
            snap, all_kvs = await self._read_set(req)
            done = await self._replayed(req.change_id, snap)
            if done is not None:
                return done
            if role is None:
                role = await self._actor_role(req, snap)
                await self._authorize(req, role, parsed, snap)
            by_key = {kv.key: kv for kv in all_kvs}
            kvs = {n: by_key.get(self.switch_key(n)) for n in parsed}
            missing = [n for n, kv in kvs.items() if kv is None]
            if missing:
                raise NotInitialised(f"switch store not initialised ({', '.join(missing)} missing): run `rollbackctl init`")
            current = {n: json.loads(kv.value) for n, kv in kvs.items()}
            for n, rev in (req.revisions or {}).items():
                if n in kvs and kvs[n].mod_revision != rev:
                    raise Conflict(str(identity.Refused(
                        identity.Refusal.STALE,
                        f"{n} is at etcd revision {kvs[n].mod_revision} (set by {current[n].get('updated_by')} at "
                        f"{current[n].get('updated_at')}); the request was signed at revision {rev}: read it again "
                        "and sign a new request")))
            if req.expected:
                for n, want in req.expected.items():
                    have = current[n]["value"]
                    if have != switches.get(n).parse(want):
                        sw = switches.get(n)
                        raise Conflict(
                            f"{n} is {sw.render(have)} (set by {current[n].get('updated_by')} at "
                            f"{current[n].get('updated_at')}), not {sw.render(sw.parse(want))} as expected: not overwritten"
                        )
            at = utcnow()
            recs = [ChangeRecord(switch=n, old=current[n]["value"], new=v) for n, v in parsed.items()]
            puts = [
                Put(self.switch_key(n), _dumps({"value": v, "updated_at": at, "updated_by": req.actor, "change_id": req.change_id}))
                for n, v in parsed.items()
            ]
            guards = [Compare(self.switch_key(n), "mod", "==", kv.mod_revision) for n, kv in kvs.items()]
            nonce_puts, nonce_guards = await self._nonce_ops(req.proofs, req.nonce_owner or req.source, at, snap)
            puts += nonce_puts
            guards += nonce_guards
            record = {
                "at": at,
                "actor": req.actor,
                "role": role,
                "reason": req.reason,
                "source": req.source,
                "action": req.action,
                "change_id": req.change_id,
                "authority": req.authority.value,
                "approved_by": req.approved_by,
                "drill": req.drill,
                "changes": [r.model_dump() for r in recs],
                "attempts": attempt + 1,  # > 1: lost a compare-and-swap to a concurrent writer, re-read, retried
                **self._signed_fields(req.proofs, req.break_glass),
            }
            ok, rev, audit_id = await self._commit(record, puts, guards, req.change_id, snap)
            if ok:
                return ChangeSetResult(change_id=req.change_id, audit_id=audit_id, revision=rev, changes=recs)
            await self._backoff(attempt)  # lost the compare-and-swap: read everything again (a replay included)
        done = await self._replayed(req.change_id)  # the same change id, applied meanwhile by another caller
        if done is not None:
            return done
        raise Contended(f"change set {req.change_id}: still contended after {MAX_ATTEMPTS} attempts; try again")

    def counter_key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def advance_counter(self, name: str, to: int) -> int:
        """Move the bookkeeping counter `<prefix><name>` (e.g. `canary/phase3/seq`) up to `to`, never down
        (compare-and-swap on its mod_revision, or on its absence); returns the value it holds after."""
        key = self.counter_key(name)
        for attempt in range(MAX_ATTEMPTS):
            kv = await self.etcd.get(key)
            cur = int(kv.value) if kv else 0
            if cur >= to:
                return cur
            guard = Compare(key, "mod", "==", kv.mod_revision) if kv else Compare(key, "create", "==", 0)
            ok, _ = await self.etcd.txn([guard], [Put(key, str(to).encode())])
            if ok:
                return to
            await self._backoff(attempt)
        raise Contended(f"counter {name}: still contended; try again")

    async def record_seen(self, seen: "SeenRecord") -> str:
        """An audit record with no switch change: a person acted on an alert in PagerDuty (seen, not a
        decision). Idempotent by the PagerDuty event id (webhooks are delivered at least once)."""
        change_id = f"seen-{seen.event_id}"[:200]
        done = await self._replayed(change_id)
        if done is not None:
            return done.audit_id
        record = {
            "at": utcnow(), "actor": f"pagerduty:{seen.by or 'unknown'}"[:64], "role": "external",
            "reason": f"PagerDuty: alert {seen.event} by {seen.by or 'someone'} at {seen.at} (seen; not a signed "
                      f"decision)" + (f"; the workflow waits for {seen.awaiting}" if seen.awaiting else ""),
            "source": seen.source, "action": f"page.{seen.event}", "change_id": change_id, "authority": "observed",
            "approved_by": None, "drill": False, "changes": [],
            "alert": {"dedup_key": seen.dedup_key, "incident": seen.incident, "event_id": seen.event_id},
        }
        for attempt in range(MAX_ATTEMPTS):
            ok, _, audit_id = await self._commit(record, [], [], change_id)
            if ok:
                return audit_id
            done = await self._replayed(change_id)
            if done is not None:
                return done.audit_id
            await self._backoff(attempt)
        raise Contended(f"audit record {change_id}: still contended; try again")

    # -- init and operators -------------------------------------------------------------------
    async def init(self, super_admin: str | None = None, actor: str = "system",
                   public_key: str | None = None) -> dict[str, Any]:
        """Write every missing default (never overwrite); bootstrap the first super admin (and their
        public key, if they have none yet: an existing key is never replaced here)."""
        ops = await self.operators()
        if super_admin is not None:
            existing = next((o for o in ops if o.name == super_admin), None)
            if existing is None and ops:
                raise PermissionDenied(
                    f"operators already exist ({', '.join(o.name for o in ops)}); add {super_admin} with "
                    "`rollbackctl operator add` as a super admin"
                )
            if existing is None:
                try:
                    await self.add_operator(super_admin, Role.SUPER_ADMIN, actor="system", bootstrap=True,
                                            public_key=public_key)
                except Conflict:  # a concurrent `init --super-admin` with the same name got there first
                    existing = await self.operator(super_admin)
                    if existing is None or existing.role is not Role.SUPER_ADMIN:
                        raise
            elif existing.role is not Role.SUPER_ADMIN:
                raise PermissionDenied(f"{super_admin} exists with role {existing.role.value}, not super_admin")
            elif public_key is not None and existing.public_key is None:
                await self.rotate_key(super_admin, public_key, actor="system", bootstrap=True)
        elif not ops:
            raise InvalidChange("no operators yet: run `rollbackctl init --super-admin NAME` to bootstrap the first one")
        written: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            snap = await self.snapshot()
            missing = [n for n, s in snap.switches.items() if s.revision == 0]
            if not missing:
                break
            at = utcnow()
            change_id = f"init-{at}"
            puts = [
                Put(self.switch_key(n), _dumps({"value": switches.get(n).default, "updated_at": at, "updated_by": actor, "change_id": change_id}))
                for n in missing
            ]
            guards = [Compare(self.switch_key(n), "create", "==", 0) for n in missing]
            record = {
                "at": at, "actor": actor, "role": "system", "reason": "initialise missing switches to their defaults",
                "source": "cli", "action": "init", "change_id": change_id, "authority": "system",
                "approved_by": None, "drill": False,
                "changes": [{"switch": n, "old": None, "new": switches.get(n).default} for n in missing],
            }
            ok, _, _ = await self._commit(record, puts, guards, None)
            if ok:
                written = missing
                break
            await self._backoff(attempt)
        return {"initialised": written, "existing": len(switches.SWITCHES) - len(written)}

    @staticmethod
    def _check_public_key(public_key: str | None) -> None:
        if public_key is None:
            return
        try:
            identity.parse_public_key(public_key)
        except ValueError as e:
            raise InvalidChange(f"public key: {e} (expected the base64 printed by `rollbackctl keygen`)") from None

    async def _super_admin(self, actor: str) -> Operator:
        who = await self.operator(actor)
        if who is None:
            raise PermissionDenied(f"unknown operator {actor!r}")
        if who.role is not Role.SUPER_ADMIN:
            raise PermissionDenied(f"{actor} is {who.role.value}; only a super_admin manages operators")
        return who

    async def add_operator(
        self, name: str, role: Role, actor: str, public_key: str | None = None, bootstrap: bool = False,
        proofs: list[identity.Proof] = (), nonce_owner: str = "cli",
    ) -> Operator:
        if name in RESERVED_NAMES:
            raise InvalidChange(f"{name!r} is reserved for a service identity")
        self._check_public_key(public_key)
        try:
            op = Operator(name=name, role=role, added_at=utcnow(), added_by=actor, public_key=public_key)
        except ValueError as e:
            raise InvalidChange(f"operator name {name!r}: lower-case letters, digits, '_', '.', '-', 1-32 chars") from e
        if not bootstrap:
            await self._super_admin(actor)
        record = {
            "at": op.added_at, "actor": actor, "role": "system" if bootstrap else Role.SUPER_ADMIN.value,
            "reason": f"add operator {name} as {role.value}", "source": "cli", "action": "operator.add",
            "change_id": None, "authority": "owner", "approved_by": None, "drill": False, "changes": [],
            # the public key is in the trail, so `audit verify` can check later signatures from it alone
            "operator": {"name": name, "role": role.value, "public_key": public_key, "key_id": op.key_id},
            **self._signed_fields(list(proofs)),
        }
        for attempt in range(MAX_ATTEMPTS):
            nonce_puts, nonce_guards = await self._nonce_ops(list(proofs), nonce_owner, op.added_at)
            ok, _, _ = await self._commit(
                record, [Put(self.operator_key(name), op.model_dump_json().encode()), *nonce_puts],
                [Compare(self.operator_key(name), "create", "==", 0), *nonce_guards], None,
            )
            if ok:
                return op
            if await self.operator(name) is not None:
                raise Conflict(f"operator {name!r} already exists")
            await self._backoff(attempt)
        raise Contended(f"operator {name}: still contended; try again")

    async def _operator_at(self, name: str, revision: int | None) -> tuple[KV, Operator]:
        """`name`'s record and its key, as a signed operator request may change it: it exists and, when the
        request names a revision, has not changed since (else refused as stale)."""
        kv = await self.etcd.get(self.operator_key(name))
        if kv is None:
            raise InvalidChange(f"unknown operator {name!r} (see `rollbackctl operator list`)")
        if revision is not None and kv.mod_revision != revision:
            raise Conflict(str(identity.Refused(
                identity.Refusal.STALE, f"operator {name} changed since the request was signed (revision "
                                        f"{kv.mod_revision}, signed at {revision}): sign a new request")))
        return kv, Operator.model_validate_json(kv.value)

    async def rotate_key(
        self, name: str, public_key: str, actor: str, bootstrap: bool = False, proofs: list[identity.Proof] = (),
        nonce_owner: str = "cli", revision: int | None = None, reason: str | None = None,
    ) -> Operator:
        """Replace `name`'s public key (a super admin's act; audited). The old key is retired: a request
        signed with it is refused as "removed key". `bootstrap` (init) only sets a first key."""
        self._check_public_key(public_key)
        if not bootstrap:
            await self._super_admin(actor)
        for attempt in range(MAX_ATTEMPTS):
            kv, op = await self._operator_at(name, revision)
            if bootstrap and op.public_key is not None:
                return op
            if op.public_key == public_key:
                raise InvalidChange(f"{name} already has key {op.key_id}")
            old = op.key_id
            new = op.model_copy(update={"public_key": public_key, "retired_keys": [
                *op.retired_keys, *([op.public_key] if op.public_key else [])]})
            at = utcnow()
            record = {
                "at": at, "actor": actor, "role": "system" if bootstrap else Role.SUPER_ADMIN.value,
                "reason": reason or f"{'set' if old is None else 'rotate'} the public key of {name}",
                "source": "cli", "action": "operator.rotate_key", "change_id": None, "authority": "owner",
                "approved_by": None, "drill": False, "changes": [],
                "operator": {"name": name, "role": op.role.value, "public_key": public_key, "key_id": new.key_id,
                             "old_key_id": old},
                **self._signed_fields(list(proofs)),
            }
            nonce_puts, nonce_guards = await self._nonce_ops(list(proofs), nonce_owner, at)
            ok, _, _ = await self._commit(
                record, [Put(self.operator_key(name), new.model_dump_json().encode()), *nonce_puts],
                [Compare(self.operator_key(name), "mod", "==", kv.mod_revision), *nonce_guards], None,
            )
            if ok:
                return new
            await self._backoff(attempt)
        raise Contended(f"operator {name}: still contended; try again")

    # -- consumers' receipts (core/watcher.Receipt) -----------------------------------------------------
    async def consumers(self) -> tuple[list[dict[str, Any]], int]:
        """Every live consumer's receipt, and the matrix revision (the last switch write) to compare them to."""
        kvs, _ = await self.etcd.get_prefix(f"{self.prefix}consumers/")
        sw, _ = await self.etcd.get_prefix(f"{self.prefix}switches/")
        out = []
        for kv in kvs:
            try:
                out.append(json.loads(kv.value))
            except ValueError:
                continue
        return out, max((kv.mod_revision for kv in sw), default=0)

    # -- passkeys (console sign-in) ----------------------------------------------------------------
    async def pending_passkeys(self) -> list[dict[str, Any]]:
        kvs, _ = await self.etcd.get_prefix(f"{self.prefix}console/pending/")
        out = []
        for kv in kvs:
            try:
                out.append({**json.loads(kv.value), "revision": kv.mod_revision})
            except ValueError:
                continue
        return sorted(out, key=lambda p: p.get("registered_at", ""))

    async def approve_passkey(
        self, name: str, credential_id: str, public_key: str, code: str, actor: str,
        proofs: list[identity.Proof] = (), nonce_owner: str = "cli", revision: int | None = None,
    ) -> Operator:
        """A super admin approves a passkey registered in the console for `name` (audited; signed when
        signing is on). What is approved is named in full (credential, public key, the code the registrant
        saw), so a pending record changed after the approver read it is refused, not approved."""
        await self._super_admin(actor)
        for attempt in range(MAX_ATTEMPTS):
            pkv = await self.etcd.get(self.pending_passkey_key(credential_id))
            if pkv is None:
                raise InvalidChange(f"no passkey {credential_id[:16]}... is awaiting approval (see `rollbackctl "
                                    "passkey list`): already approved, declined, or never registered")
            pending = json.loads(pkv.value)
            if pending.get("operator") != name:
                raise InvalidChange(f"passkey {credential_id[:16]}... was registered for {pending.get('operator')!r}, "
                                    f"not {name!r}")
            if pending.get("code") != code:
                raise InvalidChange(f"the code does not match: {name} was shown {pending.get('code')!r} when "
                                    f"registering, not {code!r}; ask them to read it out again")
            if pending.get("public_key") != public_key:
                raise Conflict("the pending passkey's public key changed since it was read: approve it again")
            kv, op = await self._operator_at(name, revision)
            for other in await self.operators():
                if any(pk.credential_id == credential_id for pk in other.passkeys):
                    raise Conflict(f"passkey {credential_id[:16]}... is already approved for {other.name}")
            at = utcnow()
            pk = Passkey(credential_id=credential_id, public_key=public_key, alg=int(pending.get("alg", 0)), code=code,
                         registered_at=str(pending.get("registered_at") or at), approved_at=at, approved_by=actor,
                         label=str(pending.get("label") or "")[:80], key=_passkey_key(pending))
            new = op.model_copy(update={"passkeys": [*op.passkeys, pk]})
            record = {
                "at": at, "actor": actor, "role": Role.SUPER_ADMIN.value,
                "reason": f"approve a passkey of {name} (code {code})", "source": "cli",
                "action": "operator.approve_passkey", "change_id": None, "authority": "owner", "approved_by": None,
                "drill": False, "changes": [],
                "operator": {"name": name, "role": op.role.value, "passkey": pk.model_dump(mode="json")},
                **self._signed_fields(list(proofs)),
            }
            nonce_puts, nonce_guards = await self._nonce_ops(list(proofs), nonce_owner, at)
            ok, _, _ = await self._commit(
                record, [Put(self.operator_key(name), new.model_dump_json().encode()),
                         Delete(self.pending_passkey_key(credential_id)), *nonce_puts],
                [Compare(self.operator_key(name), "mod", "==", kv.mod_revision),
                 Compare(self.pending_passkey_key(credential_id), "mod", "==", pkv.mod_revision), *nonce_guards], None,
            )
            if ok:
                return new
            await self._backoff(attempt)
        raise Contended(f"operator {name}: still contended; try again")

    async def remove_passkey(
        self, name: str, credential_id: str, actor: str, reason: str | None = None,
        proofs: list[identity.Proof] = (), nonce_owner: str = "cli", revision: int | None = None,
    ) -> Operator:
        """A super admin removes an approved passkey (audited): it signs in nowhere from then on (the
        console checks the operator record on every request, so open sessions of it end too)."""
        await self._super_admin(actor)
        for attempt in range(MAX_ATTEMPTS):
            kv, op = await self._operator_at(name, revision)
            gone = [pk for pk in op.passkeys if pk.credential_id == credential_id]
            if not gone:
                raise InvalidChange(f"{name} has no approved passkey {credential_id[:16]}... (see `rollbackctl "
                                    "passkey list`)")
            # kept as retired: a decision it signed before the removal still verifies when its change set is
            # written; a new one is refused as "removed key"
            new = op.model_copy(update={"passkeys": [pk for pk in op.passkeys if pk.credential_id != credential_id],
                                        "retired_keys": [*op.retired_keys, *([gone[0].key] if gone[0].key else [])]})
            at = utcnow()
            record = {
                "at": at, "actor": actor, "role": Role.SUPER_ADMIN.value,
                "reason": reason or f"remove a passkey of {name} (code {gone[0].code})", "source": "cli",
                "action": "operator.remove_passkey", "change_id": None, "authority": "owner", "approved_by": None,
                "drill": False, "changes": [],
                "operator": {"name": name, "role": op.role.value,
                             "passkey": {"credential_id": credential_id, "code": gone[0].code}},
                **self._signed_fields(list(proofs)),
            }
            nonce_puts, nonce_guards = await self._nonce_ops(list(proofs), nonce_owner, at)
            ok, _, _ = await self._commit(
                record, [Put(self.operator_key(name), new.model_dump_json().encode()), *nonce_puts],
                [Compare(self.operator_key(name), "mod", "==", kv.mod_revision), *nonce_guards], None,
            )
            if ok:
                return new
            await self._backoff(attempt)
        raise Contended(f"operator {name}: still contended; try again")
