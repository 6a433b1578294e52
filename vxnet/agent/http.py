"""The agent's HTTP API: /healthz, /readyz, /metrics, /v1/ipam, /v1/state (GET only).
A deliberately small HTTP/1.1 server on asyncio: read-only, local, one request per connection.
The views read the agent's state object; they serve from the first second of start-up on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from vxnet.agent.metrics import AgentMetrics
from vxnet.agent.state import AgentState
from vxnet.kernel.ethtool import tx_checksum

log = logging.getLogger(__name__)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
Response = tuple[int, str, bytes]


def ipam_view(state: AgentState) -> dict[str, Any]:
    rt = state.runtime
    out: dict[str, Any] = {"nodeName": state.node_name, "nodeId": rt and rt.node_id,
                           "ready": state.ready}
    if rt is None:
        return out
    key, cfg, ext = rt.lease.key, rt.cfg, rt.ext
    first = next(iter(rt.overlays.values()))
    out.update({
        "nodeIP": str(ext.ip or ext.ip6),
        "podSubnetThisNode": str(key.subnet or key.subnet6),
        "network": str(cfg.ipv4.network if cfg.ipv4 else cfg.ipv6.network),  # type: ignore[union-attr]
        "vtepMAC": first.device.mac, "mtu": first.device.mtu, "leaseKey": str(key),
    })
    if key.subnet6 and 6 in rt.overlays:
        out.update({"nodeIPv6": str(ext.ip6), "podSubnetThisNodeIPv6": str(key.subnet6),
                    "vtepMACIPv6": rt.overlays[6].device.mac})
    return out


def state_view(state: AgentState) -> dict[str, Any]:
    rt = state.runtime
    out: dict[str, Any] = {"ready": state.ready, "phase": state.phase,
                           "notReady": state.not_ready_reason or None}
    if rt is None:
        return out
    out.update({"firstSyncWrites": rt.first_sync_writes, "invalidLeases": dict(rt.invalid),
                "etcdEndpoint": str(rt.etcd.endpoint), "loopLagMaxSeconds": rt.loop_lag_max,
                "taskRestarts": dict(rt.supervisor.restarts),
                "taskErrors": dict(rt.supervisor.last_error), "overlays": {}})
    for version, ov in rt.overlays.items():
        plane = ov.plane
        programmed = plane.programmed()
        out["overlays"][f"ipv{version}"] = {
            "device": ov.device.name, "ifindex": plane.spec.ifindex, "parked": plane.parked,
            "local": str(ov.device.local_ip), "mtu": ov.device.mtu,
            "txChecksumOffload": _tx_checksum(ov.device.name),
            "nexthops": plane.spec.use_nexthops,
            "peers": {k: {"subnet": str(p.subnet), "publicIP": str(p.public_ip),
                          "vtepMAC": p.vtep_mac, "programmed": k in programmed}
                      for k, p in sorted(plane.peers.items())},
            "rejected": dict(plane.rejected),
            "drift": plane.drift(),
            "kernelWrites": plane.writes,
        }
    if rt.allow is not None:
        allow = rt.allow
        out["vxlanAllowList"] = {
            "port": allow.port, "peers": None if allow.kernel is None else len(allow.kernel),
            "inStep": allow.kernel == rt.peer_ips(), "repairs": allow.repairs,
            "refusedPackets": allow.refused_packets,
            "refusedSources": dict(sorted(allow.refused_sources.items()))}
    return out


def _tx_checksum(ifname: str) -> bool | None:
    try:
        return tx_checksum(ifname)
    except OSError:  # the device is being recreated
        return None


class ApiServer:
    def __init__(self, state: AgentState, metrics: AgentMetrics) -> None:
        self.state, self.metrics = state, metrics
        self.routes: dict[str, Callable[[], Response]] = {
            "/healthz": lambda: (200, "text/plain", b"ok\n"),
            "/readyz": self._readyz,
            "/metrics": lambda: (200, "text/plain; version=0.0.4", self.metrics.render()),
            "/v1/ipam": lambda: _json(ipam_view(self.state)),
            "/v1/state": lambda: _json(state_view(self.state)),
        }
        self._server: asyncio.Server | None = None

    def _readyz(self) -> Response:
        if self.state.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", f"not ready: {self.state.not_ready_reason}\n".encode()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, request_line: bytes) -> Response:
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"malformed request line\n"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if path not in self.routes:
            return 404, "text/plain", f"no such endpoint: {path}\n".encode()
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", f"{method} not allowed; use GET\n".encode()
        return self.routes[path]()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = b""
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
                size = len(line)
                while True:  # headers: read and ignore, within limits
                    h = await asyncio.wait_for(reader.readline(), 5)
                    size += len(h)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    if size > 16384:
                        raise ValueError
                status, ctype, body = self.respond(line)
            except TimeoutError:
                status, ctype, body = 408, "text/plain", b"request timeout\n"
            except (ValueError, asyncio.LimitOverrunError):
                status, ctype, body = 431, "text/plain", b"request headers too large\n"
            except Exception:  # a bug in a handler must not take the agent down
                log.exception("HTTP API")
                status, ctype, body = 503, "text/plain", b"internal error\n"
            head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + (b"" if line.startswith(b"HEAD ") else body))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _json(doc: object) -> Response:
    return 200, "application/json", (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
