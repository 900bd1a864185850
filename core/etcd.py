"""The one module that talks to etcd.

A thin asyncio client over the etcd v3 gRPC API. It uses only the generated stubs that ship in
`aetcd` (aetcd's own client opens one insecure channel to one host); on top of them this adds what
production needs and PITFALLS.md found missing (each point has a test against a real etcd):

- several endpoints: tried in order; a refused, silent (`connect_timeout`) or failing endpoint
  makes the same call move to the next one; the error names every endpoint and why it failed;
- TLS (CA certificate, optional client certificate and key) and user/password auth; an expired
  token is renewed, for calls and before each watch;
- transactions with compares on mod_revision / create_revision / value;
- prefix watches from a revision, raising `EtcdUnavailable` / `EtcdCompacted` so that the caller
  (core.watcher) can resume without missing a change; HTTP/2 pings end a watch whose link
  went silent (no RST) instead of waiting on it forever.

Not supported: TLS with the system's CA store (TLS is on only when a CA certificate is given), a
TLS server name other than the endpoint's host, etcd's JWT tokens (simple tokens were tested;
JWT works the same through Authenticate but was not tried), lease keep-alive streams (a lease is
refreshed by granting a new one), locks, elections, member-list
discovery (endpoints are what the settings say), and retrying a call on the same endpoint (a call
tries each endpoint once; callers retry: activities by Temporal's retry policy, the watcher itself).

Errors are classified by gRPC status and etcd's own error descriptions (`classify`), writes are
retried only when they provably did not reach a server (else EtcdOutcomeUnknown), and watches require
a leader: a member cut off from quorum cancels them and the watch moves to another endpoint.

Swap the client here and nowhere else.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from enum import Enum
from typing import AsyncIterator, Literal

# grpc-core logs a failed TLS handshake and the like on stderr at INFO level, beside the one
# clear line the CLI prints for the same error; keep its own logging to errors unless asked.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from aetcd import rpc

from core.aio import within
from core.settings import EtcdSettings


class EtcdError(Exception):
    """Base class for switch-store transport errors."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (outage, restart, network): retryable."""


class EtcdAuthError(EtcdError):
    """Credentials refused: not retryable without a fix."""


class EtcdOutcomeUnknown(EtcdUnavailable):
    """A write reached a server (or may have) and no answer came back: it may or may not have been applied.

    etcd's own client never retries a write then (clientv3 isSafeRetryMutableRPC: "write-at-most-once").
    The switch store may, because every write it makes is guarded (revision compares and change-id
    markers: a second commit of the same write cannot succeed; tests/test_etcd_rules.py proves it for
    every write path); anything else must read back before it tries again."""


class EtcdCompacted(EtcdError):
    def __init__(self, compact_revision: int):
        super().__init__(f"revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KV


@dataclass(frozen=True)
class Compare:
    key: str
    target: Literal["mod", "create", "value"]
    op: Literal["==", "!=", ">", "<"]
    value: int | bytes


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


_OPS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, ">": rpc.Compare.GREATER, "<": rpc.Compare.LESS}
_RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

# etcd's server errors this client acts on, as etcd defines them: a gRPC status and an exact description
# (etcd api/v3rpc/rpctypes/error.go; clientv3 maps errors by these descriptions, never by substrings).
NO_LEADER = (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
INVALID_AUTH_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
USER_EMPTY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
AUTH_FAILED = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
COMPACTED = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
# A watch opened with this metadata is canceled by a member that loses its leader ("etcdserver: no
# leader") instead of staying open and silent (clientv3 WithRequireLeader).
REQUIRE_LEADER = ("hasleader", "true")


class Failure(Enum):
    ELSEWHERE = "elsewhere"  # this endpoint is down, cut off or without a leader: another may answer
    TOKEN = "token"  # the auth token expired: authenticate again (the request was refused, not applied)
    AUTH = "auth"  # credentials or permission refused
    COMPACTED = "compacted"
    OTHER = "other"


def classify(code: grpc.StatusCode, details: str) -> Failure:
    """What a failed call means, by its gRPC status and etcd's error description."""
    pair = (code, (details or "").strip())
    if pair == INVALID_AUTH_TOKEN:
        return Failure.TOKEN
    if pair in (USER_EMPTY, AUTH_FAILED, PERMISSION_DENIED) or code in (grpc.StatusCode.UNAUTHENTICATED,
                                                                        grpc.StatusCode.PERMISSION_DENIED):
        return Failure.AUTH
    if pair == COMPACTED:
        return Failure.COMPACTED
    if code in _RETRY_CODES:
        return Failure.ELSEWHERE
    return Failure.OTHER


# The retry rule, for every call: a read (Range) goes on to the next endpoint on any ELSEWHERE failure;
# a write (Txn, Put, DeleteRange) only when it provably did not reach a server: the connection to that
# endpoint could not be made, the server answered "no leader" (it proposed nothing), or the token was
# refused. After DEADLINE_EXCEEDED or an UNAVAILABLE mid-call it raises EtcdOutcomeUnknown.
MUTATIONS = frozenset({"Txn", "Put", "DeleteRange"})
# gRPC's own wording when no connection to the endpoint could be made: nothing was sent (grpc-core's
# counterpart of the "there is no connection available" clientv3 checks for).
NOT_CONNECTED = "failed to connect to all addresses"


def prefix_range_end(prefix: bytes) -> bytes:
    """The key just past every key starting with `prefix`."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def _prefix_range(prefix: str) -> rpc.RangeRequest:
    """A Range of every key under `prefix`, sorted by key (get_prefix, and each prefix of a `read`)."""
    p = prefix.encode()
    return rpc.RangeRequest(key=p, range_end=prefix_range_end(p), sort_order=rpc.RangeRequest.ASCEND,
                            sort_target=rpc.RangeRequest.KEY)


def _short(e: grpc.aio.AioRpcError) -> str:
    """A gRPC error in a few words (its details repeat the address and a status)."""
    d = (e.details() or e.code().name).strip()
    d = d.replace("failed to connect to all addresses; last error: ", "")
    d = re.sub(r"^(?:[A-Z_]+: )?(?:ipv[46]:|dns:)?\S+:\d+: ", "", d)  # "UNKNOWN: ipv4:127.0.0.1:2379: "
    return d.removesuffix(": OK")


def _kv(m) -> KV:
    return KV(m.key.decode(), bytes(m.value), m.mod_revision, m.create_revision, m.version)


class Etcd:
    """An etcd v3 client. Use as `async with Etcd.from_settings(s) as etcd:`."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_cert: bytes | None = None,
        cert: bytes | None = None,
        key: bytes | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        keepalive_s: float = 10.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        if (username is None) != (password is None):
            raise ValueError("etcd auth needs both username and password")
        self.endpoints = list(endpoints)
        self._username, self._password = username, password
        self._creds = grpc.ssl_channel_credentials(ca_cert, key, cert) if ca_cert else None
        self.timeout = timeout
        # A new connection that neither succeeds nor fails within this is given up (a silent host:
        # a SYN or TLS handshake into the void); a refused one fails at once.
        self.connect_timeout = min(connect_timeout, timeout)
        # HTTP/2 pings on a live stream, so that a watch over a silently dead link (partition, no
        # RST) ends instead of waiting forever. etcd refuses pings more often than every 5 s.
        self.keepalive_s = max(keepalive_s, 5.0)
        self._idx = 0
        self._channel: grpc.aio.Channel | None = None
        self._closed = False
        self._token: str | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, s: EtcdSettings) -> "Etcd":
        read = lambda p: p.read_bytes() if p else None  # noqa: E731
        return cls(
            s.endpoint_list(),
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            ca_cert=read(s.ca_cert),
            cert=read(s.cert),
            key=read(s.key),
            timeout=s.timeout_s,
            connect_timeout=s.connect_timeout_s,
        )

    async def __aenter__(self) -> "Etcd":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        ch, self._channel = self._channel, None
        if ch is not None:
            await ch.close()

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._idx]

    # -- channel management ------------------------------------------------------------------
    def _new_channel(self, target: str) -> grpc.aio.Channel:
        opts = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(min(self.timeout, 5.0) * 1000)),
            # grpc-core times a keepalive ping out by this one (default 60 s), not keepalive_timeout
            ("grpc.http2.ping_timeout_ms", int(min(self.timeout, 5.0) * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if self._creds:
            return grpc.aio.secure_channel(target, self._creds, options=opts)
        return grpc.aio.insecure_channel(target, options=opts)

    async def _wait_connected(self, ch: grpc.aio.Channel, target: str) -> None:
        """Wait until the channel is connected or has failed; a silent endpoint times out.

        A failed connection is left to the first call, whose error names the cause (refused,
        TLS handshake, ...).
        """
        done = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                grpc.ChannelConnectivity.SHUTDOWN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        state = ch.get_state(try_to_connect=True)
        while state not in done:
            left = deadline - loop.time()
            if left <= 0:
                raise EtcdUnavailable(f"{target}: no answer within {self.connect_timeout:g}s")
            try:
                await within(left, ch.wait_for_state_change(state))
            except TimeoutError:
                raise EtcdUnavailable(f"{target}: no answer within {self.connect_timeout:g}s") from None
            state = ch.get_state()

    async def _ensure_channel(self) -> grpc.aio.Channel:
        """The channel to the current endpoint, connected (and authenticated when configured).

        On a failure the endpoint is dropped and the next one becomes current, then it raises:
        EtcdUnavailable (retryable) or EtcdAuthError (credentials refused).
        """
        async with self._lock:
            if self._channel is not None and (self._username is None or self._token is not None):
                return self._channel
            target = self.endpoint
            ch = self._channel or self._new_channel(target)
            self._channel = ch
            try:
                await self._wait_connected(ch, target)
                if self._username is not None and self._token is None:
                    resp = await rpc.AuthStub(ch).Authenticate(
                        rpc.AuthenticateRequest(name=self._username, password=self._password),
                        timeout=self.timeout,
                    )
                    self._token = resp.token
            except (EtcdUnavailable, grpc.aio.AioRpcError) as e:
                self._channel = None
                self._token = None
                await ch.close()
                if isinstance(e, grpc.aio.AioRpcError) and classify(e.code(), e.details()) is not Failure.ELSEWHERE:
                    raise EtcdAuthError(f"etcd refused user {self._username!r}: {e.details()}") from e
                self._idx = (self._idx + 1) % len(self.endpoints)
                if isinstance(e, EtcdUnavailable):
                    raise
                raise EtcdUnavailable(f"{target}: {_short(e)}") from e
            return ch

    def _metadata(self):
        return (("token", self._token),) if self._token else None

    async def _rotate(self, failed: grpc.aio.Channel | None) -> None:
        async with self._lock:
            if self._channel is failed and failed is not None:
                self._channel = None
                self._token = None
                self._idx = (self._idx + 1) % len(self.endpoints)
                await failed.close()

    async def _drop_token(self, ch: grpc.aio.Channel | None) -> None:
        async with self._lock:
            if self._channel is ch:
                self._token = None

    def _cut_off_by_failover(self, ch: grpc.aio.Channel | None) -> bool:
        """Whether a CancelledError out of a call on `ch` is not the caller's: another call failed over and
        closed the shared channel, and gRPC cancels every call still active on a channel it closes
        (grpc/aio/_channel.py, _close). Not when the caller's task is being cancelled or this client closed."""
        task = asyncio.current_task()
        return (not self._closed and ch is not None and self._channel is not ch
                and not (task is not None and task.cancelling()))

    async def _call(self, stub_cls, method: str, request, read_only: bool = False):
        """One unary call, failing over across endpoints by the retry rule above (MUTATIONS; `read_only`: a
        Txn of ranges alone, which changes nothing and may be sent again like a Range)."""
        errors: list[str] = []
        reauthed = False
        attempts = 0
        mutation = method in MUTATIONS and not read_only
        while attempts < len(self.endpoints):
            ch = None
            target = self.endpoint
            try:
                ch = await self._ensure_channel()
            except EtcdUnavailable as e:  # connecting failed: nothing was sent; _ensure_channel moved on
                errors.append(str(e))
                attempts += 1
                continue
            try:
                fn = getattr(stub_cls(ch), method)
                return await fn(request, timeout=self.timeout, metadata=self._metadata())
            except asyncio.CancelledError:
                if not self._cut_off_by_failover(ch):
                    raise  # the caller was cancelled, or this client closed
                # It failed at this endpoint like the call that failed over: the same retry rule applies.
                errors.append(f"{target}: the channel was closed by another call's failover")
                attempts += 1
                if mutation:
                    raise EtcdOutcomeUnknown(
                        f"etcd {method} to {target}: cut off mid-call by a failover: it may or may not have been "
                        "applied (read back before writing again)") from None
                continue
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details() or ""
                kind = classify(code, details)
                if kind is Failure.ELSEWHERE:
                    errors.append(f"{target}: {_short(e)}")
                    attempts += 1
                    await self._rotate(ch)
                    never_sent = (code, details.strip()) == NO_LEADER or (
                        code == grpc.StatusCode.UNAVAILABLE and details.startswith(NOT_CONNECTED))
                    if mutation and not never_sent:
                        raise EtcdOutcomeUnknown(
                            f"etcd {method} to {target}: {_short(e)}: it may or may not have been applied "
                            "(read back before writing again)") from e
                    continue
                if kind is Failure.TOKEN and self._username is not None and not reauthed:
                    reauthed = True  # the expired token was refused: the request did nothing
                    await self._drop_token(ch)
                    continue
                if (code, details.strip()) == USER_EMPTY:
                    raise EtcdAuthError(
                        "etcd requires authentication: set ROLLBACKCTL_ETCD_USERNAME and ROLLBACKCTL_ETCD_PASSWORD"
                    ) from e
                if kind in (Failure.AUTH, Failure.TOKEN):
                    raise EtcdAuthError(f"etcd: {details}") from e
                if kind is Failure.COMPACTED:
                    raise EtcdCompacted(0) from e
                raise EtcdError(f"etcd {method}: {code.name}: {details}") from e
        raise EtcdUnavailable("etcd unavailable: " + "; ".join(errors))

    # -- KV ------------------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        resp = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key.encode()))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under `prefix`, sorted by key, and the store revision they were read at."""
        resp = await self._call(rpc.KVStub, "Range", _prefix_range(prefix))
        return [_kv(m) for m in resp.kvs], resp.header.revision

    async def get_from(self, start_key: str, prefix: str, limit: int = 0) -> tuple[list[KV], int]:
        """Keys under `prefix` from `start_key` on (inclusive), sorted by key, at most `limit` (0: all)."""
        resp = await self._call(
            rpc.KVStub,
            "Range",
            rpc.RangeRequest(
                key=start_key.encode(),
                range_end=prefix_range_end(prefix.encode()),
                limit=limit,
                sort_order=rpc.RangeRequest.ASCEND,
                sort_target=rpc.RangeRequest.KEY,
            ),
        )
        return [_kv(m) for m in resp.kvs], resp.header.revision

    async def read(self, keys: list[str], prefixes: list[str] = ()) -> tuple[dict[str, KV | None],
                                                                             dict[str, list[KV]], int]:
        """Several keys and prefixes in one round trip, all at one store revision (a Txn of ranges and
        nothing else: it writes nothing, so it fails over like a Range). Returns each key's KV (None: absent),
        each prefix's KVs sorted by key, and the revision they were read at."""
        ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode())) for k in keys]
        ops += [rpc.RequestOp(request_range=_prefix_range(p)) for p in prefixes]
        resp = await self._call(rpc.KVStub, "Txn", rpc.TxnRequest(success=ops), read_only=True)
        got = [r.response_range.kvs for r in resp.responses]
        singles = {k: (_kv(kvs[0]) if kvs else None) for k, kvs in zip(keys, got)}
        ranges = {p: [_kv(m) for m in kvs] for p, kvs in zip(prefixes, got[len(keys):])}
        return singles, ranges, resp.header.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write `key`; with `lease`, it disappears when the lease expires (a registration that stops being
        refreshed: its owner is gone)."""
        resp = await self._call(rpc.KVStub, "Put", rpc.PutRequest(key=key.encode(), value=value, lease=lease))
        return resp.header.revision

    # -- leases ----------------------------------------------------------------------------------
    async def lease_grant(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` seconds (etcd may raise it to its minimum); its id. Refreshing is by granting
        a new one and writing again (unary calls only: they fail over like every other call)."""
        resp = await self._call(rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=int(ttl_s)))
        if resp.error:
            raise EtcdError(f"etcd LeaseGrant: {resp.error}")
        return int(resp.ID)

    async def lease_revoke(self, lease: int) -> None:
        """End a lease now: the keys written with it are deleted."""
        await self._call(rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))

    async def delete_prefix(self, prefix: str) -> int:
        p = prefix.encode()
        resp = await self._call(
            rpc.KVStub, "DeleteRange", rpc.DeleteRangeRequest(key=p, range_end=prefix_range_end(p))
        )
        return resp.deleted

    async def txn(self, compare: list[Compare], success: list[Put | Delete], failure=()) -> tuple[bool, int]:
        """One atomic transaction; returns (succeeded, revision of the store after it)."""

        def cmp(c: Compare):
            m = rpc.Compare(key=c.key.encode(), result=_OPS[c.op])
            if c.target == "mod":
                m.target, m.mod_revision = rpc.Compare.MOD, int(c.value)
            elif c.target == "create":
                m.target, m.create_revision = rpc.Compare.CREATE, int(c.value)
            else:
                m.target, m.value = rpc.Compare.VALUE, bytes(c.value)
            return m

        def op(o: Put | Delete):
            if isinstance(o, Put):
                return rpc.RequestOp(request_put=rpc.PutRequest(key=o.key.encode(), value=o.value))
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=o.key.encode()))

        req = rpc.TxnRequest(
            compare=[cmp(c) for c in compare],
            success=[op(o) for o in success],
            failure=[op(o) for o in failure],
        )
        resp = await self._call(rpc.KVStub, "Txn", req)
        return resp.succeeded, resp.header.revision

    async def compact(self, revision: int) -> None:
        await self._call(rpc.KVStub, "Compact", rpc.CompactionRequest(revision=revision, physical=True))

    # -- watch -----------------------------------------------------------------------------------
    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Yield batches of events under `prefix` from `start_revision` (inclusive).

        Ends by raising: EtcdUnavailable when the stream drops (etcd restart, network) and
        EtcdCompacted when `start_revision` is gone. The caller resumes from its last revision + 1.
        """
        p = prefix.encode()
        # One unary call first: it fails over to a live endpoint and renews an expired auth token
        # (a watch opened with a stale token is canceled with "permission denied").
        await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=p, range_end=prefix_range_end(p), count_only=True))
        ch = await self._ensure_channel()
        target = self.endpoint
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=p, range_end=prefix_range_end(p), start_revision=start_revision, progress_notify=True
            )
        )
        call = rpc.WatchStub(ch).Watch(metadata=(REQUIRE_LEADER, *(self._metadata() or ())))
        try:
            await call.write(create)
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd watch stream ended")
                if resp.compact_revision:
                    raise EtcdCompacted(resp.compact_revision)
                if resp.canceled:
                    reason = (resp.cancel_reason or "").strip()
                    if reason == PERMISSION_DENIED[1]:
                        await self._drop_token(ch)
                        raise EtcdAuthError(f"etcd watch refused: {reason}")
                    await self._rotate(ch)  # e.g. "etcdserver: no leader": this member is cut off; try another
                    raise EtcdUnavailable(f"etcd watch canceled by {target}: {reason}")
                if resp.events:
                    yield [
                        WatchEvent("put" if ev.type == rpc.Event.PUT else "delete", _kv(ev.kv))
                        for ev in resp.events
                    ]
        except asyncio.CancelledError:
            if self._cut_off_by_failover(ch):  # (as in _call)
                raise EtcdUnavailable(f"etcd watch dropped: {target}: the channel was closed by another call's "
                                      "failover") from None
            raise
        except grpc.aio.AioRpcError as e:
            if classify(e.code(), e.details()) is Failure.ELSEWHERE or e.code() == grpc.StatusCode.CANCELLED:
                await self._rotate(ch)
                raise EtcdUnavailable(f"etcd watch dropped: {e.code().name}: {_short(e)}") from e
            raise EtcdError(f"etcd watch: {e.code().name}: {e.details()}") from e
        finally:
            call.cancel()
