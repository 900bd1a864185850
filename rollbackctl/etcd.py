"""The one module that talks to etcd.

A thin asyncio client over the etcd v3 gRPC API. It uses only the generated stubs that ship in
`aetcd` (aetcd's own client opens one insecure channel to one host); on top of them this adds what
production needs and PITFALLS.md found missing:

- several endpoints: tried in order; on UNAVAILABLE the call moves to the next one;
- TLS (CA, optional client certificate) and user/password auth (token refreshed when it expires);
- transactions with compares on mod_revision / create_revision / value;
- prefix watches from a revision, raising `EtcdUnavailable` / `EtcdCompacted` so that the caller
  (rollbackctl.watcher) can resume without missing a change.

Swap the client here and nowhere else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Literal

import grpc
from aetcd import rpc

from rollbackctl.settings import EtcdSettings


class EtcdError(Exception):
    """Base class for switch-store transport errors."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (outage, restart, network): retryable."""


class EtcdAuthError(EtcdError):
    """Credentials refused: not retryable without a fix."""


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


def prefix_range_end(prefix: bytes) -> bytes:
    """The key just past every key starting with `prefix`."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


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
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        if (username is None) != (password is None):
            raise ValueError("etcd auth needs both username and password")
        self.endpoints = list(endpoints)
        self._username, self._password = username, password
        self._creds = grpc.ssl_channel_credentials(ca_cert, key, cert) if ca_cert else None
        self.timeout = timeout
        self._idx = 0
        self._channel: grpc.aio.Channel | None = None
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
        )

    async def __aenter__(self) -> "Etcd":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        ch, self._channel = self._channel, None
        if ch is not None:
            await ch.close()

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._idx]

    # -- channel management ------------------------------------------------------------------
    async def _ensure_channel(self) -> grpc.aio.Channel:
        async with self._lock:
            if self._channel is None:
                target = self.endpoint
                opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
                self._channel = (
                    grpc.aio.secure_channel(target, self._creds, options=opts)
                    if self._creds
                    else grpc.aio.insecure_channel(target, options=opts)
                )
                self._token = None
                if self._username is not None:
                    stub = rpc.AuthStub(self._channel)
                    try:
                        resp = await stub.Authenticate(
                            rpc.AuthenticateRequest(name=self._username, password=self._password),
                            timeout=self.timeout,
                        )
                    except grpc.aio.AioRpcError as e:
                        ch, self._channel = self._channel, None
                        await ch.close()
                        if e.code() in _RETRY_CODES:
                            raise
                        raise EtcdAuthError(f"etcd refused user {self._username!r}: {e.details()}") from e
                    self._token = resp.token
            return self._channel

    def _metadata(self):
        return (("token", self._token),) if self._token else None

    async def _rotate(self, failed: grpc.aio.Channel | None) -> None:
        async with self._lock:
            if self._channel is failed and failed is not None:
                self._channel = None
                self._idx = (self._idx + 1) % len(self.endpoints)
                await failed.close()

    async def _call(self, stub_cls, method: str, request):
        """One unary call, failing over across endpoints; raises EtcdUnavailable if none answers."""
        last: Exception | None = None
        reauthed = False
        attempts = 0
        while attempts < len(self.endpoints):
            ch = None
            try:
                ch = await self._ensure_channel()
                fn = getattr(stub_cls(ch), method)
                return await fn(request, timeout=self.timeout, metadata=self._metadata())
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in _RETRY_CODES:
                    last = e
                    attempts += 1
                    await self._rotate(ch)
                    continue
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT) and (
                    "token" in (e.details() or "") and not reauthed
                ):
                    reauthed = True
                    async with self._lock:
                        if self._channel is ch and ch is not None:
                            self._channel = None
                            await ch.close()
                    continue
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise EtcdAuthError(f"etcd: {e.details()}") from e
                if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (e.details() or ""):
                    raise EtcdCompacted(0) from e
                raise EtcdError(f"etcd {method}: {code.name}: {e.details()}") from e
        raise EtcdUnavailable(
            f"etcd unavailable at {', '.join(self.endpoints)}: {getattr(last, 'details', lambda: last)()}"
        )

    # -- KV ------------------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        resp = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key.encode()))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under `prefix`, sorted by key, and the store revision they were read at."""
        p = prefix.encode()
        resp = await self._call(
            rpc.KVStub,
            "Range",
            rpc.RangeRequest(
                key=p,
                range_end=prefix_range_end(p),
                sort_order=rpc.RangeRequest.ASCEND,
                sort_target=rpc.RangeRequest.KEY,
            ),
        )
        return [_kv(m) for m in resp.kvs], resp.header.revision

    async def put(self, key: str, value: bytes) -> int:
        resp = await self._call(rpc.KVStub, "Put", rpc.PutRequest(key=key.encode(), value=value))
        return resp.header.revision

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
        ch = None
        try:
            ch = await self._ensure_channel()
        except grpc.aio.AioRpcError as e:
            await self._rotate(ch)
            raise EtcdUnavailable(f"etcd watch: {e.details()}") from e
        p = prefix.encode()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=p, range_end=prefix_range_end(p), start_revision=start_revision, progress_notify=True
            )
        )
        call = rpc.WatchStub(ch).Watch(metadata=self._metadata())
        try:
            await call.write(create)
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd watch stream ended")
                if resp.compact_revision:
                    raise EtcdCompacted(resp.compact_revision)
                if resp.canceled:
                    raise EtcdUnavailable(f"etcd watch canceled: {resp.cancel_reason}")
                if resp.events:
                    yield [
                        WatchEvent("put" if ev.type == rpc.Event.PUT else "delete", _kv(ev.kv))
                        for ev in resp.events
                    ]
        except grpc.aio.AioRpcError as e:
            if e.code() in _RETRY_CODES or e.code() == grpc.StatusCode.CANCELLED:
                await self._rotate(ch)
                raise EtcdUnavailable(f"etcd watch dropped: {e.code().name}") from e
            raise EtcdError(f"etcd watch: {e.code().name}: {e.details()}") from e
        finally:
            call.cancel()
