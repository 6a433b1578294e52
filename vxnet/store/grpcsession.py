"""etcd's gRPC API behind the JSON gateway's session interface (vxnet/store/etcd.py), for the
one setup the gateway refuses: etcd with --client-cert-auth and authentication on, and a client
certificate that carries a Common Name. etcd cannot pass that name on through its gateway, so
it answers every such request with HTTP 400; over gRPC the name is the etcd user, as flanneld
uses it. Imported only then: gRPC's C core, threads and protobuf cost ~8 MiB.

Requests and answers stay the gateway's JSON (protobuf's own JSON mapping, which the gateway
uses too), so nothing above a session knows which one it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc
from google.protobuf import json_format

from vxnet.errors import VxnetError
from vxnet.store.etcd import Credentials, Endpoint, Json, Refused, Session, TLSFiles

# Keepalive pings notice a black-holed connection in ~10 s. etcd refuses pings more often than
# every 5 s, and pings while no call is open (GOAWAY "too_many_pings"); the agent always has its
# watch open. A subchannel pool per channel: after failover (or our address changing) a new
# channel makes a new connection rather than share the old one from gRPC's global pool.
CHANNEL_OPTIONS = (("grpc.keepalive_time_ms", 6000), ("grpc.keepalive_timeout_ms", 4000),
                   ("grpc.keepalive_permit_without_calls", 0),
                   ("grpc.http2.max_pings_without_data", 0), ("grpc.use_local_subchannel_pool", 1))

# the gateway's paths: (stub, method, request message)
_UNARY: dict[str, tuple[Any, str, Any]] = {
    "/v3/kv/range": (rpc.KVStub, "Range", rpc.RangeRequest),
    "/v3/kv/put": (rpc.KVStub, "Put", rpc.PutRequest),
    "/v3/kv/deleterange": (rpc.KVStub, "DeleteRange", rpc.DeleteRangeRequest),
    "/v3/kv/txn": (rpc.KVStub, "Txn", rpc.TxnRequest),
    "/v3/kv/compaction": (rpc.KVStub, "Compact", rpc.CompactionRequest),
    "/v3/lease/grant": (rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest),
    "/v3/lease/revoke": (rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest),
    "/v3/auth/authenticate": (rpc.AuthStub, "Authenticate", rpc.AuthenticateRequest),
}


def _json(message: Any) -> Json:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)  # type: ignore[no-any-return]


def _refused(e: grpc.aio.AioRpcError) -> Refused:
    return Refused(e.code().value[0], e.details() or e.code().name)


class GrpcSession(Session):
    def __init__(self, ep: Endpoint, tls: TLSFiles, timeout: float,
                 auth: Credentials | None) -> None:
        self.endpoint, self.timeout, self._auth = ep, timeout, auth
        self._metadata: tuple[tuple[str, str], ...] = ()
        if ep.tls or tls.cafile is not None:
            tls.context()  # the files' own errors, named by flag

            def read(path: str | None) -> bytes | None:
                return Path(path).read_bytes() if path else None

            creds = grpc.ssl_channel_credentials(read(tls.cafile), read(tls.keyfile),
                                                 read(tls.certfile))
            self._channel = grpc.aio.secure_channel(ep.netloc, creds, CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(ep.netloc, CHANNEL_OPTIONS)

    def _use_token(self, token: str) -> None:
        self._metadata = (("token", token),)

    async def post(self, path: str, body: Json, sent: asyncio.Event | None = None) -> Json:
        if sent is not None:
            sent.set()  # gRPC's own threads send it
        try:
            if path == "/v3/lease/keepalive":  # a stream: one request, one answer
                call = rpc.LeaseStub(self._channel).LeaseKeepAlive(metadata=self._metadata)
                try:
                    await call.write(json_format.ParseDict(body, rpc.LeaseKeepAliveRequest()))
                    return {"result": _json(await call.read())}
                finally:
                    call.cancel()
            stub, method, request = _UNARY[path]
            answer = await getattr(stub(self._channel), method)(
                json_format.ParseDict(body, request()), timeout=self.timeout,
                metadata=self._metadata)
            return _json(answer)
        except grpc.aio.AioRpcError as e:
            raise _refused(e) from None

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: Json, headers: dict[str, str]
                     ) -> AsyncIterator[_Lines]:
        """The watch, its answers as the gateway's lines; `headers` carry gRPC metadata
        (Grpc-Metadata-<name>), as the gateway reads them."""
        if path != "/v3/watch":
            raise VxnetError(f"no gRPC stream for {path}")
        prefix = "grpc-metadata-"
        metadata = (*self._metadata, *((k.lower()[len(prefix):], v) for k, v in headers.items()
                                       if k.lower().startswith(prefix)))
        call = rpc.WatchStub(self._channel).Watch(metadata=metadata)
        try:
            await asyncio.wait_for(call.write(json_format.ParseDict(body, rpc.WatchRequest())),
                                   self.timeout)
            yield _Lines(call)
        except grpc.aio.AioRpcError as e:
            raise _refused(e) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()


class _Lines:
    """A gRPC watch call read as the gateway's stream of JSON lines."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def aiter_lines(self) -> AsyncIterator[str]:
        try:
            while (answer := await self._call.read()) is not grpc.aio.EOF:
                yield json.dumps({"result": _json(answer)})
        except grpc.aio.AioRpcError as e:
            raise _refused(e) from None
