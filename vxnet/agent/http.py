"""The agent's HTTP API: /healthz, /readyz, /metrics, /v1/ipam, /v1/state (GET only).
A deliberately small HTTP/1.1 server on asyncio: read-only, local, one request per connection."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from vxnet.agent.agent import Agent
from vxnet.agent.metrics import AgentMetrics

log = logging.getLogger(__name__)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
Response = tuple[int, str, bytes]


class ApiServer:
    def __init__(self, agent: Agent, metrics: AgentMetrics) -> None:
        self.agent, self.metrics = agent, metrics
        self.routes: dict[str, Callable[[], Response]] = {
            "/healthz": lambda: (200, "text/plain", b"ok\n"),
            "/readyz": self._readyz,
            "/metrics": lambda: (200, "text/plain; version=0.0.4", self.metrics.render()),
            "/v1/ipam": lambda: _json(self.agent.ipam()),
            "/v1/state": lambda: _json(self.agent.state()),
        }
        self._server: asyncio.Server | None = None

    def _readyz(self) -> Response:
        if self.agent.ready.is_set():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready: first full sync not done\n"

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
