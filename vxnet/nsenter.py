"""Entering a network namespace from this thread, for opening sockets bound to it (a socket stays
in the namespace it was made in). Used by the kernel layer when it is given a namespace to work
in, and by the lab."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Switch this thread into the namespace at `path`, and always back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # never leave the thread elsewhere
                raise OSError(ctypes.get_errno(), "setns back to own namespace")
    finally:
        os.close(own)
        os.close(target)


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Inside the named namespace (from `ip netns add`), or nowhere new for None."""
    if name is None:
        yield
    else:
        with entered(f"/run/netns/{name}"):
            yield
