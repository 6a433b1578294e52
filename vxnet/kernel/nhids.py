"""Nexthop ids for one overlay family: one per peer gateway, from a range of our own, the same
ones across restarts (adopted from the kernel), never one another program uses."""

from __future__ import annotations

from vxnet.kernel import netlink as nl
from vxnet.kernel.nexthops import NexthopDump, NexthopTable
from vxnet.kernel.peer import PeerError

BASE: dict[int, int] = {nl.AF_INET: 0x76780000, nl.AF_INET6: 0x76790000}
SPAN = 0x10000


class NexthopIds:
    def __init__(self, family: int) -> None:
        self.base = BASE[family]
        self._ids: dict[bytes, int] = {}  # gateway -> id
        self._adopt: dict[bytes, int] = {}  # ids an earlier run left, taken over on first use
        self._held_back: set[int] = set()  # those ids: nobody else's while their peer may come
        self._foreign: set[int] = set()  # ids in the kernel that are not ours to give
        self._next = self.base

    @property
    def range(self) -> range:
        return range(self.base, self.base + SPAN)

    def saw(self, dumped: NexthopDump, adopt: bool) -> None:
        """A fresh dump of every nexthop: note the ids taken by others, and (before the first
        build) the ids an earlier run gave our device's gateways."""
        self._foreign = dumped.foreign
        if adopt:
            self._adopt = {}
            for nhid in sorted(dumped.ours):
                self._adopt.setdefault(NexthopTable.gateway(dumped.ours[nhid]), nhid)
            self._held_back = set(dumped.ours)  # duplicates too: a route may use either

    def adopted(self) -> None:
        """Every peer is in (the first build, or the last page of start-up's): what was not
        taken over is not ours to keep."""
        self._adopt, self._held_back = {}, set()

    def get(self, gw: bytes, table: NexthopTable) -> int:
        """The id for this gateway: its own, an adopted one, or the next free in our range."""
        nhid = self._ids.get(gw)
        if nhid is not None:
            return nhid
        nhid = self._adopt.pop(gw, None)
        if nhid is None or table.wants(nhid):
            # an id an earlier run gave a peer still to come is not given away meanwhile: that
            # peer's route in the kernel still goes through it
            for _ in range(SPAN):
                nhid, self._next = self._next, self.base + (self._next + 1 - self.base) % SPAN
                if not (table.wants(nhid) or table.holds(nhid) or nhid in self._foreign
                        or nhid in self._held_back):
                    break
            else:
                raise PeerError(f"no free nexthop id left in {self.base:#x}+{SPAN}")
        self._ids[gw] = nhid
        return nhid

    def keep(self, gw: bytes, nhid: int) -> None:
        """A replaced peer keeps its id, so a changed MAC or IP rewrites nothing else."""
        self._ids[gw] = nhid

    def release(self, gw: bytes) -> int | None:
        nhid = self._ids.pop(gw, None)
        if nhid in self._held_back:  # an earlier run's, and adoption is open: its peer may
            self._adopt[gw] = nhid  # come back (a start-up listing read again)
        return nhid

    def held(self, gw: bytes) -> int | None:
        return self._ids.get(gw)
