"""etcd v3 access over aetcd: endpoints, TLS, a timeout on every call, endpoint failover.

aetcd talks to one host and only over plain gRPC; this wraps it so the rest of vxnet sees one
client over a list of endpoints, and one transient error type (StoreUnavailable) to retry on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions as aexc
import grpc
from aetcd import rpc

from vxnet.errors import StoreAuthError, StoreUnavailable, VxnetError

log = logging.getLogger(__name__)
T = TypeVar("T")


# -- aetcd, typed: the library ships no type information, so these Protocols say what vxnet
# -- calls on its client and reads from its answers (aetcd's rtypes and etcd's protobufs).

class KeyValue(Protocol):
    """One key as etcd answers it: aetcd's rtypes.KeyValue and Get, a watch event's kv."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def create_revision(self) -> int: ...
    @property
    def mod_revision(self) -> int: ...
    @property
    def lease(self) -> int: ...


class WatchEvent(Protocol):
    """mvccpb.Event: `type` is PUT (0) or DELETE (1), `kv` the key after the change."""

    @property
    def type(self) -> int: ...
    @property
    def kv(self) -> KeyValue: ...


class _Header(Protocol):
    @property
    def revision(self) -> int: ...


class _Response(Protocol):  # rtypes.Put
    @property
    def header(self) -> _Header: ...


class _Range(_Response, Protocol):  # rtypes.GetRange
    def __iter__(self) -> Iterator[KeyValue]: ...


class _Deleted(Protocol):  # rtypes.Delete
    @property
    def deleted(self) -> int: ...


class _Granted(Protocol):  # aetcd.leases.Lease
    @property
    def id(self) -> int: ...


class _KeepAlive(Protocol):  # rpc.LeaseKeepAliveResponse
    @property
    def TTL(self) -> int: ...


class AetcdClient(Protocol):
    """The part of aetcd.Client that vxnet uses."""

    @property
    def channel(self) -> grpc.aio.Channel: ...
    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None: ...
    async def close(self) -> None: ...
    async def get(self, key: bytes) -> KeyValue | None: ...
    async def get_prefix(self, key_prefix: bytes) -> _Range: ...
    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> _Response: ...
    async def delete(self, key: bytes) -> _Deleted | None: ...
    # compare and ops: aetcd.transactions objects; answers: a protobuf per put or delete, a
    # list of (value, rtypes.Get) per get
    async def transaction(self, compare: list[Any], success: list[Any] | None = None,
                          failure: list[Any] | None = None) -> tuple[bool, list[Any]]: ...
    async def lease(self, ttl: int) -> _Granted: ...
    async def refresh_lease(self, lease_id: int) -> _KeepAlive | None: ...
    async def revoke_lease(self, lease_id: int) -> None: ...
    async def compact(self, revision: int, physical: bool = False) -> None: ...
    async def range_page(self, key: bytes, range_end: bytes, limit: int, revision: int
                         ) -> Any: ...  # rpc.RangeResponse: kvs, more, header


PAGE = 1000  # keys per answer when listing a prefix

# Errors that mean "this endpoint is not answering now": rotate, report, retry later.
TRANSIENT = (aexc.ConnectionFailedError, aexc.ConnectionTimeoutError, aexc.InternalError,
             aexc.WatchTimeoutError, asyncio.TimeoutError, grpc.aio.AioRpcError)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        text = url.strip()
        parts = urlsplit(text if "://" in text else f"http://{text}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VxnetError(f"--etcd-endpoints: {url!r} is not http(s)://HOST:PORT")
        try:
            port = parts.port or 2379
        except ValueError:
            raise VxnetError(f"--etcd-endpoints: {url!r} has an invalid port") from None
        return cls(parts.hostname, port, parts.scheme == "https")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(name: str, path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise VxnetError(f"--etcd-{name} {path}: {e.strerror}") from None

        return grpc.ssl_channel_credentials(
            read("cafile", self.cafile), read("keyfile", self.keyfile),
            read("certfile", self.certfile),
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """etcd's user/password authentication (flanneld's --etcd-username/--etcd-password)."""

    username: str
    password: str = field(repr=False)


def credentials(username: str | None, password: str | None) -> Credentials | None:
    if username is None and password is None:
        return None
    if not username or password is None:
        raise VxnetError("--etcd-username and --etcd-password go together")
    return Credentials(username, password)


# gRPC keepalive: a black-holed connection is noticed in ~10 s, not at the next TCP timeout.
# etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time), and pings while no
# call is open (it answers them with GOAWAY "too_many_pings"): the agent always has its watch
# open, which is what keepalive guards; an idle connection needs no pings. A subchannel pool
# of its own per channel: a new channel (after failover, or our address changing) must make a
# new connection, not share the old one that gRPC keeps in its global pool.
CHANNEL_OPTIONS = {"grpc.keepalive_time_ms": 6000, "grpc.keepalive_timeout_ms": 4000,
                   "grpc.keepalive_permit_without_calls": 0,
                   "grpc.http2.max_pings_without_data": 0, "grpc.use_local_subchannel_pool": 1}

# Answers that mean "these credentials will never work", as opposed to "try again later".
_AUTH_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                 grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


class _Client(aetcd.Client):  # type: ignore[misc]  # aetcd.Client is untyped (Any) to mypy
    """aetcd's client with TLS and authentication over either channel: aetcd alone has no TLS,
    and its own connect() would authenticate only over plain gRPC."""

    def __init__(self, ep: Endpoint, tls: TLSFiles, timeout: float,
                 auth: Credentials | None) -> None:
        super().__init__(ep.host, ep.port, timeout=timeout,
                         options=CHANNEL_OPTIONS)
        self._endpoint, self._auth = ep, auth
        self._creds = tls.credentials() if ep.tls or tls.cafile else None

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = (grpc.aio.secure_channel(target, self._creds, self._options.items())
                        if self._creds is not None
                        else grpc.aio.insecure_channel(target, self._options.items()))
        if self._auth is not None:
            await self._authenticate(self._auth)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                              metadata=self.metadata)
        self._connected.set()

    async def range_page(self, key: bytes, range_end: bytes, limit: int, revision: int
                         ) -> Any:
        """At most `limit` keys from `key` at `revision` (0: now): aetcd's get_range has no
        limit. Its errors mapped as aetcd maps its own (permission, auth, compaction)."""
        await self.connect()
        request = rpc.RangeRequest(key=key, range_end=range_end, limit=limit, revision=revision)
        try:
            return await self.kvstub.Range(request, timeout=self._timeout,
                                           metadata=self.metadata)
        except grpc.aio.AioRpcError as e:
            aexc._handle_exception(e)  # aetcd's own mapping: raises its error for the code
            raise

    async def _authenticate(self, auth: Credentials) -> None:
        self.auth_stub = rpc.AuthStub(self.channel)
        request = rpc.AuthenticateRequest(name=auth.username, password=auth.password)
        try:
            resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in _AUTH_REFUSED:
                raise StoreAuthError(f"etcd {self._endpoint} refused user {auth.username!r}: "
                                     f"{e.details()}") from None
            raise  # transport trouble: transient
        self.metadata = (("token", resp.token),)


class Etcd:
    """One logical etcd client over several endpoints. Every call has a deadline."""

    def __init__(self, endpoints: Sequence[str] | str, *, tls: TLSFiles | None = None,
                 timeout: float = 5.0, auth: Credentials | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise VxnetError("--etcd-endpoints: no endpoint given")
        self.endpoints = [Endpoint.parse(e) for e in endpoints]
        self.tls = tls or TLSFiles()
        self.auth = auth
        self.timeout = timeout
        self._index = 0
        self._client: _Client | None = None
        self.reconnects = 0  # exported as a metric by the agent
        self.watching = False  # a watch stream is open and answering (its last read did)

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index]

    async def client(self) -> AetcdClient:
        if self._client is None:
            self._client = _Client(self.endpoint, self.tls, self.timeout, self.auth)
            await self._client.connect()
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), self.timeout)
            except (TimeoutError, Exception) as e:  # closing a dead channel may fail
                log.debug("closing etcd client: %r", e)

    async def reconnect(self) -> None:
        """Drop the connection and make a new one to the same endpoint at the next call: after
        our own address changed, the old connection's packets go nowhere."""
        await self.close()
        self.reconnects += 1

    async def failover(self, failed: AetcdClient | None = None) -> None:
        """Drop the current connection and move to the next endpoint -- unless the connection
        that failed (`failed`) was already replaced by another task's failover."""
        if failed is not None and failed is not self._client:
            return
        await self.close()
        self._index = (self._index + 1) % len(self.endpoints)
        self.reconnects += 1

    async def call(self, fn: Callable[[AetcdClient], Awaitable[T]]) -> T:
        """Run one request; on a transport failure rotate endpoints and raise StoreUnavailable."""
        client = None
        try:
            client = await self.client()
            return await asyncio.wait_for(fn(client), self.timeout * 2)
        except aexc.UnauthenticatedError as e:  # our token expired or was revoked: log in again
            await self.close()
            raise StoreUnavailable(f"etcd {self.endpoint}: {e}; authenticating again") from None
        except asyncio.CancelledError:
            if cancelling():
                raise
            # not us being cancelled: gRPC cancels the calls of a channel another task closed
            raise StoreUnavailable(f"etcd {self.endpoint}: connection closed under the request"
                                   ) from None
        except TRANSIENT as e:
            failed = self.endpoint
            await self.failover(client)
            raise StoreUnavailable(f"etcd {failed}: {type(e).__name__}: {e}") from None
        except aexc.ClientError as e:
            if "user name is empty" in str(e):
                raise StoreAuthError(f"etcd {self.endpoint} requires authentication: give "
                                     "--etcd-username and --etcd-password") from None
            if "permission denied" not in str(e):
                raise
            user = f" to user {self.auth.username!r}" if self.auth else ""
            raise StoreAuthError(f"etcd {self.endpoint}: permission denied{user} (does the "
                                 "user's role cover the prefix?)") from None

    # Thin typed helpers over call(): the only operations the store needs.

    async def connected(self) -> AetcdClient:
        """A connected client, connecting (and failing over) as call() does."""
        return await self.call(_itself)

    async def get(self, key: bytes) -> KeyValue | None:
        return await self.call(lambda c: c.get(key))

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        kvs: list[KeyValue] = []
        revision = 0
        async for page, at in self.prefix_pages(prefix):
            kvs += page
            revision = at
        return kvs, revision

    async def prefix_pages(self, prefix: bytes, page: int = PAGE
                           ) -> AsyncIterator[tuple[list[KeyValue], int]]:
        """Everything under prefix at one revision, `page` keys at a time, with that revision:
        a caller that decodes each page as it comes never holds the whole answer (20 000
        leases in one answer were ~8 MiB of peak memory at start-up)."""
        end, start, revision = prefix_end(prefix), prefix, 0
        while True:
            resp = await self.call(_page(start, end, page, revision))
            revision = revision or resp.header.revision
            kvs = list(resp.kvs)
            yield kvs, revision
            if not resp.more or not kvs:
                return
            start = kvs[-1].key + b"\0"

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> int:
        r = await self.call(lambda c: c.put(key, value, lease=lease or None))
        return r.header.revision

    async def delete(self, key: bytes) -> bool:
        r = await self.call(lambda c: c.delete(key))
        return r is not None and r.deleted > 0

    async def txn(self, compare: list[Any], success: list[Any],
                  failure: list[Any] | None = None) -> tuple[bool, list[Any]]:
        return await self.call(lambda c: c.transaction(compare, success, failure or []))

    async def grant(self, ttl: int) -> int:
        lease = await self.call(lambda c: c.lease(ttl))
        return lease.id

    async def refresh(self, lease_id: int) -> int:
        """Keep a lease alive once; returns its remaining TTL (0 or less: it is gone)."""
        reply = await self.call(lambda c: c.refresh_lease(lease_id))
        return reply.TTL if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self.call(lambda c: c.revoke_lease(lease_id))

    async def compact(self, revision: int) -> None:
        await self.call(lambda c: c.compact(revision, physical=True))

    async def watch_prefix(self, prefix: bytes, start_revision: int, *,
                           progress_every: float = 5.0
                           ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events under prefix from start_revision on, one batch per etcd response
        (a transaction's events arrive together). Our own stream rather than aetcd's watcher:
        it requires a leader (a member cut off from quorum ends the stream instead of keeping
        it silently open), and after `progress_every` seconds of silence it asks for progress;
        no answer to that either means a dead connection. Both raise StoreUnavailable after
        moving to the next endpoint; a compacted start raises RevisionCompactedError."""
        client = await self.connected()
        metadata = (*(client.metadata or ()), ("hasleader", "true"))
        call = rpc.WatchStub(client.channel).Watch(metadata=metadata)
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision,
            progress_notify=True))
        progress = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
        # one read stays in flight across progress checks: cancelling it would end the call
        read: asyncio.Future[Any] | None = None
        try:
            await asyncio.wait_for(call.write(create), self.timeout)
            asked = False
            while True:
                read = read or asyncio.ensure_future(call.read())
                if not (await asyncio.wait({read}, timeout=progress_every))[0]:
                    if asked:
                        raise StoreUnavailable("watch stream silent: no answer to a progress "
                                               "request")
                    await asyncio.wait_for(call.write(progress), self.timeout)
                    asked = True
                    continue
                if read.cancelled():  # the channel was closed (another task's failover)
                    raise StoreUnavailable("watch stream closed")
                resp, read, asked = read.result(), None, False
                self.watching = resp is not grpc.aio.EOF
                if resp is grpc.aio.EOF:
                    raise StoreUnavailable("watch stream ended")
                if resp.compact_revision:
                    raise aexc.RevisionCompactedError(resp.compact_revision)
                if resp.canceled:
                    raise StoreUnavailable(f"watch canceled: {resp.cancel_reason or 'no reason'}")
                if resp.events:
                    yield list(resp.events)  # mvccpb.Event as they came: no copying
        except asyncio.CancelledError:
            if cancelling():
                raise
            await self.failover(client)
            raise StoreUnavailable(f"etcd {self.endpoint}: watch: connection closed") from None
        except (StoreUnavailable, grpc.aio.AioRpcError, TimeoutError) as e:
            failed = self.endpoint
            await self.failover(client)
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            raise StoreUnavailable(f"etcd {failed}: watch: {detail or type(e).__name__}"
                                   ) from None
        finally:
            self.watching = False
            if read is not None:
                read.cancel()
            call.cancel()


def _page(start: bytes, end: bytes, limit: int, revision: int
          ) -> Callable[[AetcdClient], Awaitable[Any]]:
    return lambda c: c.range_page(start, end, limit, revision)


def cancelling() -> bool:
    """Is the current task itself being cancelled (rather than an awaited gRPC call)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _itself(client: AetcdClient) -> AetcdClient:
    return client


def prefix_end(prefix: bytes) -> bytes:
    end: bytes = aetcd.utils.prefix_range_end(prefix)  # aetcd is untyped (Any) to mypy
    return end
