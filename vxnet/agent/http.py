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
from vxnet.agent.runtime import peer_ips
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
        "subnetAllocation": cfg.subnet_allocation,
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
        r = plane.resolver
        if r is not None:
            out["overlays"][f"ipv{version}"]["onDemand"] = {
                "entries": {t.name: len(t.kernel) for t in r.tables},
                "misses": dict(sorted(r.misses.items())), "lastUnknown": r.last_unknown}
    if rt.allow is not None:
        allow = rt.allow
        out["vxlanAllowList"] = {
            "port": allow.port, "peers": None if allow.kernel is None else len(allow.kernel),
            "inStep": allow.kernel == peer_ips(rt.overlays), "repairs": allow.repairs,
            "refusedPackets": allow.refused_packets,
            "refusedSources": dict(sorted(allow.refused_sources.items()))}
    return out


def health_view(state: AgentState) -> dict[str, Any]:
    """Per peer: the verdict, since when, why, round trips (probes off: "enabled": false)."""
    rt = state.runtime
    health = rt.health if rt is not None else None
    if health is None:
        return {"enabled": False}
    return {"enabled": True, "intervalSeconds": health.interval,
            "summary": dict(health.counts()),
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
            "/v1/ipam": lambda: _json(ipam_view(self.state)),
            "/v1/state": lambda: _json(state_view(self.state)),
            "/v1/health": lambda: _json(health_view(self.state)),
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
        if self.state.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", f"not ready: {self.state.not_ready_reason}\n".encode()

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
