"""What both HTTP stores (etcd's gateway, the Kubernetes API) share: how an answer is read,
and what a failed HTTP exchange is called in a log line."""

from __future__ import annotations

from typing import Any

import httpx


async def exchange(http: httpx.AsyncClient, method: str, path: str, **kw: Any
                   ) -> tuple[int, bytes]:
    """(status, body) of one request. The body is read as a stream: httpx's Response and its
    stream hold each other, so a body read into the Response lives until the cyclic GC runs,
    not until it is decoded -- and the first sync pauses the GC over a listing (20 000 leases:
    ~7 MiB of etcd's pages; 5 000 real Nodes: ~35 MiB)."""
    async with http.stream(method, path, **kw) as resp:
        return resp.status_code, b"".join([chunk async for chunk in resp.aiter_bytes()])


def why(e: BaseException) -> str:
    """A transport failure in words: a timeout says so (httpx's own, or our deadline's)."""
    if isinstance(e, httpx.TimeoutException | TimeoutError):
        return f"no answer in time ({type(e).__name__})"
    return str(e) or type(e).__name__
