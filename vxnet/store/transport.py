"""What a failed HTTP exchange is called in a log line, for both HTTP stores (etcd's gateway,
the Kubernetes API)."""

from __future__ import annotations

import httpx


def why(e: BaseException) -> str:
    """A transport failure in words: a timeout says so (httpx's own, or our deadline's)."""
    if isinstance(e, httpx.TimeoutException | TimeoutError):
        return f"no answer in time ({type(e).__name__})"
    return str(e) or type(e).__name__
