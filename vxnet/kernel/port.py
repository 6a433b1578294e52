"""The one kernel interface the reconciling code needs: RtnlSocket implements it (structurally,
without naming it), and so does the fake kernel of the unit tests (tests/unit/kernel/
fakekernel.py), which can make every call of it fail.

Code that writes or dumps peer state takes a `Kernel`, never an RtnlSocket: what it may do to
the kernel is exactly this, and a test can stand in for all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from vxnet.kernel.netlink import Failure, NetlinkError, Reply

__all__ = ["Failure", "Kernel", "NetlinkError", "Reply"]


@runtime_checkable
class Kernel(Protocol):
    def batch(self, mtype: int, flags: int, bodies: Sequence[bytes]) -> list[Failure]:
        """Send a request of type `mtype` with `flags` per body, in order; the ones that
        failed, each with its index. The kernel goes on past a failed request. A socket error
        raises (OSError): then nothing is known about what was written."""
        ...

    def dump(self, mtype: int, body: bytes) -> Iterable[Reply]:
        """A whole dump: (buffer, payload offset, payload end) of each message, parsed with
        the codec's parsers (RtnlSocket's is a netlink.Dump: iterable more than once, and
        digested by its datagrams). Raises NetlinkError (the kernel refused it, or a
        concurrent change interrupted it five times) or OSError."""
        ...
