"""The one kernel interface the reconciling code needs: RtnlSocket implements it, and so does
the fake kernel of the unit tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from vxnet.kernel.netlink import Failure


class Kernel(Protocol):
    def batch(self, requests: Iterable[tuple[object, tuple[int, int, bytes]]]) -> list[Failure]:
        """Send every request; the ones that failed (with what they were sent for)."""
        ...

    def dump(self, mtype: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """A whole dump: (buffer, start, end) of each message."""
        ...
