"""etcd v3 through its JSON gateway (the /v3/ API every etcd 3.4+ member serves on its client
URLs), over httpx: endpoints, TLS, authentication, a timeout on every call, endpoint failover.

Why not gRPC: the gateway carries every call vxnet makes (ranges, transactions, leases, watch),
and gRPC's C core, its threads and protobuf cost the agent ~8 MiB and a quarter of its import
time (bench/etcd_client_bench.py). What HTTP/1.1 cannot do is send on an open watch: there is
no progress request, so a silent watch is checked with a linearizable read instead (see
`watch_prefix`), and a dead connection is found by TCP keepalive (`KEEPALIVE`). One setup
refuses the gateway -- etcd with --client-cert-auth and authentication on, to a client
certificate carrying a Common Name --: there the client switches to gRPC on its own
(grpcsession.py, behind the same Session interface).

The rest of vxnet sees one client over a list of endpoints and a few typed errors: transient
trouble is StoreUnavailable (rotate to the next endpoint, retry later), refused credentials or
permissions StoreAuthError, a compacted revision RevisionCompacted, anything else etcd refuses
StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from base64 import b64encode
from binascii import a2b_base64
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from vxnet.errors import (
    RevisionCompacted,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
    VxnetError,
)
from vxnet.store import txn
from vxnet.store.transport import exchange, why

log = logging.getLogger(__name__)
T = TypeVar("T")
Json = dict[str, Any]

PAGE = 1000  # keys per answer when listing a prefix
PUT, DELETE = 0, 1  # mvccpb.Event.EventType

# A connection whose packets go nowhere (black-holed, the member's host gone) is noticed in
# ~10 s rather than at TCP's own timeout: keepalive probes after 6 s idle, 2 probes 2 s apart,
# and unacknowledged data given up after 10 s. This is what gRPC's keepalive pings did.
KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
             (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 6),
             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
             (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2),
             (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 10_000)]

# etcd's gRPC status codes (as the gateway passes them) that mean "this member cannot answer
# now" -- no leader, a timed-out proposal, a leader change, overload: rotate and retry.
_TRANSIENT_CODES = frozenset({1, 2, 4, 8, 10, 13, 14})
_UNAUTHENTICATED = 16  # our token expired or was revoked: log in again
COMMON_NAME = -1  # not etcd's: its gateway refused a client certificate carrying a Common Name
_COMMON_NAME_REFUSED = b"CommonName of client sending a request against gateway"
# The connection failed: httpx's own errors, and what it passes through unwrapped (a TLS alert
# on a read is an ssl.SSLError; TimeoutError from our own deadlines). All are OSErrors.
_TRANSPORT = (httpx.HTTPError, OSError)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd answers it (mvccpb.KeyValue)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def of(cls, kv: Json) -> KeyValue:
        # proto3 JSON: int64 as strings, bytes as base64, zero values left out. a2b_base64 is
        # what b64decode calls, without its copy of the text as bytes first
        return cls(a2b_base64(kv["key"]), a2b_base64(kv.get("value", "")),
                   int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                   int(kv.get("lease", 0)))


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """mvccpb.Event: `type` is PUT or DELETE, `kv` the key after the change."""

    type: int
    kv: KeyValue

    @classmethod
    def of(cls, ev: Json) -> WatchEvent:
        return cls(DELETE if ev.get("type") == "DELETE" else PUT, KeyValue.of(ev["kv"]))


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

    @property
    def netloc(self) -> str:
        """host:port, an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext:
        """The TLS context for https endpoints: the CA (else the system's), our certificate."""
        for name, path in (("cafile", self.cafile), ("certfile", self.certfile),
                           ("keyfile", self.keyfile)):
            if path is not None:
                try:
                    Path(path).read_bytes()
                except OSError as e:
                    raise VxnetError(f"--etcd-{name} {path}: {e.strerror}") from None
        try:
            ctx = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                ctx.load_cert_chain(self.certfile, self.keyfile)
        except ssl.SSLError as e:
            raise VxnetError(f"--etcd-cafile/--etcd-certfile/--etcd-keyfile: {e}") from None
        return ctx


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



class Lines(Protocol):
    """A streaming answer, line by line (httpx's Response; GrpcSession's watch)."""

    def aiter_lines(self) -> AsyncIterator[str]: ...


class Refused(Exception):
    """etcd answered with an error: its gRPC status code and message (code COMMON_NAME: the
    gateway refused our client certificate, see GrpcSession)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _answer(raw: bytes | str) -> Json:
    """A gateway answer decoded; an error answer raised as Refused. Unary calls answer errors
    as {"error": msg, "code": N}, a stream's line as {"error": {"grpc_code": N, ...}}."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = raw.encode() if isinstance(raw, str) else raw
        if text.startswith(_COMMON_NAME_REFUSED):
            raise Refused(COMMON_NAME, text.decode(errors="replace").strip())
        raise Refused(14, f"not an answer from etcd's JSON gateway: {raw[:80]!r}")
    err = doc.get("error")
    if err is None:
        return doc
    if isinstance(err, dict):
        raise Refused(int(err.get("grpc_code", 2)), str(err.get("message", "")))
    raise Refused(int(doc.get("code", 2)), str(doc.get("message") or err))


def _b64(raw: bytes) -> str:
    return b64encode(raw).decode()


class Session:
    """One endpoint: a pool of HTTP/1.1 connections, and our authentication token."""

    def __init__(self, ep: Endpoint, tls: TLSFiles, timeout: float, auth: Credentials | None,
                 transport: httpx.AsyncBaseTransport | None) -> None:
        secure = ep.tls or tls.cafile is not None
        self.endpoint, self.timeout, self._auth = ep, timeout, auth
        self._headers: dict[str, str] = {}
        # trust_env off: an operator's HTTP(S)_PROXY is for the world, not the cluster's etcd.
        # verify=False over plain HTTP: nothing is verified there, and httpx's default context
        # loads certifi's bundle (55-110 ms of every start-up)
        self._http = httpx.AsyncClient(
            base_url=f"{'https' if secure else 'http'}://{ep.netloc}",
            transport=transport or httpx.AsyncHTTPTransport(
                verify=tls.context() if secure else False, socket_options=KEEPALIVE),
            timeout=httpx.Timeout(timeout), trust_env=False)

    async def login(self) -> None:
        if self._auth is None:
            return
        name = self._auth.username
        try:
            doc = await self.post("/v3/auth/authenticate",
                                  {"name": name, "password": self._auth.password})
        except Refused as e:
            if e.code in _TRANSIENT_CODES or e.code == COMMON_NAME:
                raise
            raise StoreAuthError(f"etcd {self.endpoint} refused user {name!r}: {e.message}"
                                 ) from None
        self._use_token(str(doc.get("token", "")))

    def _use_token(self, token: str) -> None:
        self._headers = {"Authorization": token}

    async def post(self, path: str, body: Json, sent: asyncio.Event | None = None) -> Json:
        """The answer to one request; `sent` is set once the request has left."""
        async def trace(event: str, info: object) -> None:
            if sent is not None and event == "http11.send_request_body.complete":
                sent.set()

        _, content = await exchange(self._http, "POST", path, content=json.dumps(body).encode(),
                                    headers=self._headers,
                                    extensions={"trace": trace} if sent else None)
        return _answer(content)

    def stream(self, path: str, body: Json, headers: dict[str, str]
               ) -> contextlib.AbstractAsyncContextManager[Lines]:
        """A streaming answer: no read deadline (the caller watches for silence)."""
        return self._http.stream("POST", path, content=json.dumps(body).encode(),
                                 headers={**self._headers, **headers},
                                 timeout=httpx.Timeout(self.timeout, read=None))

    async def close(self) -> None:
        await self._http.aclose()


class Etcd:
    """One logical etcd client over several endpoints. Every call has a deadline."""

    def __init__(self, endpoints: Sequence[str] | str, *, tls: TLSFiles | None = None,
                 timeout: float = 5.0, auth: Credentials | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """transport: what carries the requests (tests: httpx.MockTransport); default TCP."""
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise VxnetError("--etcd-endpoints: no endpoint given")
        self.endpoints = [Endpoint.parse(e) for e in endpoints]
        self.tls = tls or TLSFiles()
        self.auth = auth
        self.timeout = timeout
        self._transport = transport
        self._index = 0
        self._session: Session | None = None
        self.grpc = False  # talking gRPC, not the gateway (see GrpcSession)
        self.reconnects = 0  # exported as a metric by the agent
        self.watching = False  # a watch stream is open and answering (its last read did)

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index]

    async def client(self) -> Session:
        if self._session is None:
            if self.grpc:
                from vxnet.store.grpcsession import GrpcSession  # ~8 MiB: only when needed

                session: Session = GrpcSession(self.endpoint, self.tls, self.timeout, self.auth)
            else:
                session = Session(self.endpoint, self.tls, self.timeout, self.auth,
                                   self._transport)
            try:
                await session.login()
            except BaseException:
                await session.close()
                raise
            self._session = session
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await asyncio.wait_for(session.close(), self.timeout)
            except (TimeoutError, Exception) as e:  # closing a dead connection may fail
                log.debug("closing etcd client: %r", e)

    async def reconnect(self) -> None:
        """Drop the connections and make new ones to the same endpoint at the next call: after
        our own address changed, the old connections' packets go nowhere."""
        await self.close()
        self.reconnects += 1

    async def failover(self, failed: Session | None = None) -> None:
        """Drop the current connections and move to the next endpoint -- unless the session
        that failed (`failed`) was already replaced by another task's failover."""
        if failed is not None and failed is not self._session:
            return
        await self.close()
        self._index = (self._index + 1) % len(self.endpoints)
        self.reconnects += 1

    async def call(self, fn: Callable[[Session], Awaitable[T]]) -> T:
        """Run one request; on a transport failure rotate endpoints and raise StoreUnavailable."""
        session = None
        try:
            session = await self.client()
            return await asyncio.wait_for(fn(session), self.timeout * 2)
        except asyncio.CancelledError:
            if cancelling():
                raise
            # not us being cancelled: a request on connections another task closed
            raise StoreUnavailable(f"etcd {self.endpoint}: connection closed under the request"
                                   ) from None
        except _TRANSPORT as e:
            failed = self.endpoint
            await self.failover(session)
            raise StoreUnavailable(f"etcd {failed}: {why(e)}") from None
        except Refused as e:
            if e.code == COMMON_NAME and not self.grpc:
                await self._to_grpc()
                return await self.call(fn)  # once: over gRPC the gateway's refusal cannot come
            raise await self._refused(e, session) from None

    async def _to_grpc(self) -> None:
        log.warning("etcd %s refuses client certificates that carry a Common Name on its JSON "
                    "gateway (--client-cert-auth with authentication on); talking gRPC to etcd "
                    "instead (~8 MiB more)", self.endpoint)
        self.grpc = True
        await self.close()

    async def _refused(self, e: Refused, session: Session | None) -> VxnetError:
        """What etcd's refusal means to the caller (and to our connection)."""
        where = self.endpoint
        if e.code == COMMON_NAME:  # a watch (a call switches and tries again itself)
            await self._to_grpc()
            return StoreUnavailable(f"etcd {where}: {e.message}; trying gRPC")
        if e.code in _TRANSIENT_CODES:
            await self.failover(session)
            return StoreUnavailable(f"etcd {where}: {e.message}")
        if e.code == _UNAUTHENTICATED:  # our token expired or was revoked: log in again
            await self.close()
            return StoreUnavailable(f"etcd {where}: {e.message}; authenticating again")
        if "user name is empty" in e.message:
            return StoreAuthError(f"etcd {where} requires authentication: give "
                                  "--etcd-username and --etcd-password")
        if "permission denied" in e.message:
            user = f" to user {self.auth.username!r}" if self.auth else ""
            return StoreAuthError(f"etcd {where}: permission denied{user} (does the user's "
                                  "role cover the prefix?)")
        if "compacted" in e.message:
            return RevisionCompacted(f"etcd {where}: {e.message}")
        return StoreError(f"etcd {where}: {e.message}", e.code)

    async def _request(self, path: str, body: Json, sent: asyncio.Event | None = None) -> Json:
        return await self.call(lambda s: s.post(path, body, sent))

    # The operations the store needs.

    async def connected(self) -> Session:
        """A connected session, connecting (and failing over) as call() does."""
        return await self.call(_itself)

    async def get(self, key: bytes) -> KeyValue | None:
        kvs = (await self._request("/v3/kv/range", {"key": _b64(key)})).get("kvs")
        return KeyValue.of(kvs[0]) if kvs else None

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
        leases in one answer were ~8 MiB of peak memory at start-up). The next page is asked
        for before this one is handed over: etcd's gateway encodes it (~30 ms per 1 000 keys)
        while the caller decodes this one."""
        end = _b64(prefix_end(prefix))

        async def ask(start: bytes, revision: int) -> asyncio.Task[Json]:
            """The request for a page, on its way: returns once it has been sent."""
            sent = asyncio.Event()
            task = asyncio.ensure_future(self._request("/v3/kv/range", {
                "key": _b64(start), "range_end": end, "limit": page, "revision": revision},
                sent))
            left = asyncio.ensure_future(sent.wait())
            await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
            left.cancel()
            return task

        doc = await (await ask(prefix, 0))
        revision = int(doc["header"]["revision"])
        following: asyncio.Task[Json] | None = None
        try:
            while True:
                kvs = [KeyValue.of(kv) for kv in doc.get("kvs", ())]
                more = bool(doc.get("more")) and bool(kvs)
                del doc
                if more:
                    following = await ask(kvs[-1].key + b"\0", revision)
                yield kvs, revision
                if following is None:
                    return
                doc, following = await following, None
        finally:
            if following is not None:  # the caller stopped early
                following.cancel()

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> int:
        doc = await self._request("/v3/kv/put", txn.put(key, value, lease or 0)["request_put"])
        return int(doc["header"]["revision"])

    async def delete(self, key: bytes) -> bool:
        doc = await self._request("/v3/kv/deleterange", txn.delete(key)["request_delete_range"])
        return int(doc.get("deleted", 0)) > 0

    async def txn(self, compare: list[txn.Compare], success: list[txn.Op],
                  failure: list[txn.Op] | None = None) -> tuple[bool, list[KeyValue | None]]:
        """Whether the compares held, and what each `txn.get` of the branch taken found."""
        doc = await self._request("/v3/kv/txn", {"compare": compare, "success": success,
                                                  "failure": failure or []})
        got = [r["response_range"].get("kvs") for r in doc.get("responses", ())
               if "response_range" in r]
        return bool(doc.get("succeeded")), [KeyValue.of(kvs[0]) if kvs else None for kvs in got]

    async def grant(self, ttl: int) -> int:
        return int((await self._request("/v3/lease/grant", {"TTL": ttl}))["ID"])

    async def refresh(self, lease_id: int) -> int:
        """Keep a lease alive once; returns its remaining TTL (0 or less: it is gone)."""
        doc = await self._request("/v3/lease/keepalive", {"ID": lease_id})
        return int(doc.get("result", {}).get("TTL", 0))

    async def revoke(self, lease_id: int) -> None:
        await self._request("/v3/lease/revoke", {"ID": lease_id})

    async def compact(self, revision: int) -> None:
        await self._request("/v3/kv/compaction", {"revision": revision, "physical": True})

    async def watch_prefix(self, prefix: bytes, start_revision: int, *, silence: float = 5.0
                           ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events under prefix from start_revision on, one batch per etcd response
        (a transaction's events arrive together). It requires a leader (a member cut off from
        quorum ends the stream instead of keeping it silently open). Over HTTP/1.1 nothing
        can be sent on an open watch, so after `silence` seconds without a word the member is
        asked a linearizable read on another connection: no answer within `silence` more
        means a frozen member or no quorum. Both raise StoreUnavailable after moving to the
        next endpoint; a compacted start raises RevisionCompacted."""
        session = await self.connected()
        create = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                     "start_revision": start_revision, "progress_notify": True}}
        # one read stays in flight across silence checks: cancelling it would end the stream
        read: asyncio.Future[str] | None = None
        try:
            async with session.stream("/v3/watch", create,
                                      {"Grpc-Metadata-hasleader": "true"}) as resp:
                lines = resp.aiter_lines()
                while True:
                    read = read or asyncio.ensure_future(anext(lines))
                    if not (await asyncio.wait({read}, timeout=silence))[0]:
                        await self._answers(session, prefix, silence)
                        continue
                    try:
                        line = read.result()
                    except StopAsyncIteration:
                        raise StoreUnavailable("watch stream ended") from None
                    read = None
                    if not line.strip():
                        continue
                    result = _answer(line).get("result", {})
                    self.watching = True
                    if result.get("compact_revision"):
                        raise RevisionCompacted(
                            f"etcd {self.endpoint}: watch from {start_revision}: compacted",
                            int(result["compact_revision"]))
                    if result.get("canceled"):
                        raise StoreUnavailable(
                            f"watch canceled: {result.get('cancel_reason') or 'no reason'}")
                    if events := result.get("events"):
                        yield [WatchEvent.of(e) for e in events]
        except asyncio.CancelledError:
            if cancelling():
                raise
            await self.failover(session)
            raise StoreUnavailable(f"etcd {self.endpoint}: watch: connection closed") from None
        except Refused as e:
            raise await self._refused(e, session) from None
        except (StoreUnavailable, *_TRANSPORT) as e:
            failed = self.endpoint
            await self.failover(session)
            raise StoreUnavailable(f"etcd {failed}: watch: {why(e)}") from None
        finally:
            self.watching = False
            if read is not None:
                read.cancel()

    async def _answers(self, session: Session, prefix: bytes, within: float) -> None:
        """The member still serves linearizable reads (it has a leader and is not frozen)."""
        ask = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "count_only": True}
        try:
            await asyncio.wait_for(session.post("/v3/kv/range", ask), within)
        except (*_TRANSPORT, Refused) as e:
            raise StoreUnavailable(f"watch stream silent, and the member answers no read "
                                   f"either ({why(e)})") from None


def cancelling() -> bool:
    """Is the current task itself being cancelled (rather than an awaited request)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _itself(session: Session) -> Session:
    return session


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix` (etcd's rule: the
    prefix with its last byte below 0xff incremented; b"\\0", every key, if there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])
