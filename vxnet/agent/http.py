"""The agent's HTTP API: /healthz, /readyz, /metrics, /v1/ipam, /v1/state (GET only).
A deliberately small HTTP/1.1 server on asyncio: read-only, local, one request per connection.

It runs in a thread with an event loop of its own, so that a probe is never kept waiting by
the agent's busy moments (a burst of 20 000 lease changes): /healthz and /readyz are answered
there -- /healthz from the main loop's heartbeat, so a main loop stuck for STALL seconds does
fail it -- and the other views are computed in the main loop, where the state they read lives,
and handed over. They serve from the first second of start-up on."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from vxnet.agent.metrics import AgentMetrics
from vxnet.agent.state import AgentState, AgentStatus
from vxnet.kernel.ethtool import tx_checksum

log = logging.getLogger(__name__)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
Response = tuple[int, str, bytes]


def ipam_view(status: AgentStatus) -> dict[str, Any]:
    rs = status.running
    out: dict[str, Any] = {"nodeName": status.node_name,
                           "nodeId": rs.store.node_id if rs else None, "ready": status.ready}
    if rs is None:
        return out
    node = rs.node
    first = next(iter(rs.overlays.values())).device
    out.update({
        "nodeIP": node.ip or node.ip6, "podSubnetThisNode": node.subnet or node.subnet6,
        "network": node.network or node.network6, "vtepMAC": first.mac, "mtu": first.mtu,
        "leaseKey": node.lease_key, "subnetAllocation": node.subnet_allocation,
    })
    if node.subnet6 and 6 in rs.overlays:
        out.update({"nodeIPv6": node.ip6, "podSubnetThisNodeIPv6": node.subnet6,
                    "vtepMACIPv6": rs.overlays[6].device.mac})
    return out


def state_view(status: AgentStatus) -> dict[str, Any]:
    rs = status.running
    out: dict[str, Any] = {"ready": status.ready, "phase": status.phase,
                           "notReady": status.not_ready or None}
    if rs is None:
        return out
    out.update({"firstSyncWrites": rs.first_sync_writes,
                "invalidLeases": dict(rs.invalid_leases), "etcdEndpoint": rs.store.endpoint,
                "loopLagMaxSeconds": rs.loop_lag_max, "taskRestarts": rs.tasks.restarts,
                "taskErrors": rs.tasks.last_error, "overlays": {}})
    for version, fam in rs.overlays.items():
        dev, plane, detail = fam.device, fam.plane, fam.detail
        view: dict[str, Any] = {
            "device": dev.device, "ifindex": dev.ifindex, "parked": dev.parked,
            "local": dev.local, "mtu": dev.mtu, "txChecksumOffload": _tx_checksum(dev.device),
            "nexthops": dev.nexthops, "rejected": dict(plane.rejected),
            "kernelWrites": plane.writes,
        }
        if detail is not None:
            view["peers"] = {k: {"subnet": str(p.subnet), "publicIP": str(p.public_ip),
                                 "vtepMAC": p.vtep_mac, "programmed": k in detail.programmed}
                             for k, p in sorted(detail.peers.items())}
            view["drift"] = detail.drift
        if plane.on_demand is not None:
            od = plane.on_demand
            view["onDemand"] = {"entries": od.entries, "misses": od.misses,
                                "lastUnknown": od.last_unknown}
        out["overlays"][f"ipv{version}"] = view
    if rs.allow is not None:
        a = rs.allow
        out["vxlanAllowList"] = {"port": a.port, "peers": a.peers, "inStep": a.in_step,
                                 "repairs": a.repairs, "refusedPackets": a.refused_packets,
                                 "refusedSources": a.refused_sources}
    if rs.forward is not None:
        f = rs.forward
        out["forwardRules"] = {"backend": f.backend, "inPlace": f.in_place,
                               "repairs": f.repairs, "error": f.error}
    return out


def health_view(status: AgentStatus) -> dict[str, Any]:
    """Per peer: the verdict, since when, why, round trips (probes off: "enabled": false)."""
    health = status.running.health if status.running is not None else None
    if health is None:
        return {"enabled": False}
    return {"enabled": True, "intervalSeconds": health.interval,
            "summary": health.counts,
            "peers": {k: {"state": p.state, "diagnosis": p.diagnosis,
                          "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p.since)),
                          "vxlanIP": str(p.target.vxlan_ip), "publicIP": str(p.target.public_ip),
                          "rttMs": None if p.rtt is None else round(p.rtt * 1000, 3),
                          "underlayRttMs": None if p.underlay_rtt is None else
                          round(p.underlay_rtt * 1000, 3), "fullSizeOK": p.mtu_ok}
                      for k, p in sorted(health.peers.items())}}


def _tx_checksum(ifname: str) -> bool | None:
    try:
        return tx_checksum(ifname)
    except OSError:  # the device is being recreated
        return None


STALL = 10.0  # seconds without a main-loop heartbeat before /healthz fails
VIEW_TIMEOUT = 5.0  # seconds a view computed in the main loop may take


class ApiServer:
    def __init__(self, state: AgentState, metrics: AgentMetrics) -> None:
        self.state, self.metrics = state, metrics
        # views computed in the main loop; /healthz and /readyz are the server thread's own
        self.routes: dict[str, Callable[[], Response]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": lambda: (200, "text/plain; version=0.0.4", self.metrics.render()),
            "/v1/ipam": lambda: _json(ipam_view(self.state.source.status())),
            "/v1/state": lambda: _json(state_view(self.state.source.status(detail=True))),
            "/v1/health": lambda: _json(health_view(self.state.source.status())),
        }
        self._local = {"/healthz", "/readyz"}
        self.beat = time.monotonic()  # the main loop's last heartbeat
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._heart: asyncio.Task[None] | None = None

    def _healthz(self) -> Response:
        quiet = time.monotonic() - self.beat
        if quiet < STALL:
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", f"event loop stalled for {quiet:.0f}s\n".encode()

    def _readyz(self) -> Response:
        source = self.state.source
        if source.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", f"not ready: {source.not_ready_reason}\n".encode()

    async def start(self, host: str, port: int) -> None:
        """Listen (OSError if the address cannot be bound), in the server thread."""
        self._main = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-api",
                                        daemon=True)
        self._thread.start()
        listening = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, host, port), self._loop)
        self._server = await asyncio.wrap_future(listening)
        self._heart = asyncio.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(1)

    async def close(self) -> None:
        if self._heart is not None:
            self._heart.cancel()
        if self._thread is not None:
            if self._server is not None:
                self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    async def _answer(self, line: bytes) -> Response:
        """In the server thread: the response, from the main loop where the view needs it."""
        parts = line.decode("latin-1").split()
        path = parts[1].split("?", 1)[0] if len(parts) == 3 else ""
        if path in self._local or self._main is None or path not in self.routes:
            return self.respond(line)
        done = asyncio.run_coroutine_threadsafe(self._in_main(line), self._main)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(done), VIEW_TIMEOUT)
        except TimeoutError:
            return 503, "text/plain", b"the agent is too busy to answer; try again\n"

    async def _in_main(self, line: bytes) -> Response:
        return self.respond(line)

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
                status, ctype, body = await self._answer(line)
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
