"""The owners of the layer-2 tables on our device: permanent ARP/NDP entries (peer .0 -> VTEP
MAC) and permanent FDB entries (VTEP MAC -> public IP). Both come from the same netlink
messages (RTM_*NEIGH; AF_BRIDGE for the FDB), so one dump per family is filed with whichever
table claims each entry -- the on-demand answers of kernel/resolver.py included."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel, Request
from vxnet.kernel.table import DeviceTable

K = TypeVar("K", bound=Hashable)
NO_MAC = bytes(6)
Entry = tuple[int, int, int, int, bytes | None, bytes | None]  # nl.parse_neigh's


class L2Table(DeviceTable[K, bytes]):
    """A table fed by neighbour messages on one device."""

    def __init__(self, name: str, family: int, ifindex: int,
                 encode_set: Callable[[K, bytes], Request],
                 encode_del: Callable[[K, bytes], Request], show: Callable[[K], str]) -> None:
        super().__init__(name, ifindex, encode_set, encode_del, show)
        self.family = family  # of its messages: AF_BRIDGE for FDB entries
        self._staged: dict[K, bytes] = {}

    def claim(self, entry: Entry) -> tuple[K, bytes | None] | None:
        """(key, value) if this message is about an entry at one of our keys (value None:
        the kernel holds nothing of ours there), else None."""
        raise NotImplementedError

    # -- a dump, entry by entry ----------
    def offer(self, entry: Entry) -> bool:
        """A dumped entry: kept for load_staged() if it is ours; True if we claim it."""
        got = self.claim(entry)
        if got is None:
            return False
        if got[1] is not None:
            self._staged.setdefault(got[0], got[1])
        return True

    def load_staged(self) -> None:
        entries, self._staged = self._staged, {}
        self.load(entries)

    def dump(self, kernel: Kernel) -> dict[K, bytes]:
        """This table's entries in the kernel now (the cache is left as it is)."""
        for buf, off, end in kernel.dump(nl.RTM_GETNEIGH,
                                         nl.neigh_dump_request(self.family, self.ifindex)):
            self.offer(nl.parse_neigh(buf, off, end))
        entries, self._staged = self._staged, {}
        return entries

    def load(self, entries: dict[K, bytes]) -> None:
        """A fresh dump's entries of ours."""
        self.load_kernel(entries)

    # -- notifications ----------
    def notify(self, deleted: bool, entry: Entry) -> bool | None:
        """A notification: None if not ours, else whether it changed what we know."""
        got = self.claim(entry)
        return None if got is None else self.seen(deleted, got[0], got[1])

    def seen(self, deleted: bool, key: K, value: bytes | None) -> bool:
        self.kernel_changed(key, None if deleted else value)
        return True


class FdbTable(L2Table[nl.FdbKey]):
    def __init__(self, ifindex: int) -> None:
        super().__init__("fdb", nl.AF_BRIDGE, ifindex, nl.fdb_set, nl.fdb_del, show_mac)

    def claim(self, entry: Entry) -> tuple[nl.FdbKey, bytes | None] | None:
        fam, ifindex, state, flags, dst, mac = entry
        if fam != nl.AF_BRIDGE or ifindex != self.ifindex or dst is None or mac is None \
                or mac == NO_MAC:  # flood entries are not ours
            return None
        ours = state & nl.NUD_PERMANENT and flags & nl.NTF_SELF
        return nl.FdbKey(ifindex, mac), dst if ours else None

    def seen(self, deleted: bool, key: nl.FdbKey, value: bytes | None) -> bool:
        if deleted and self.in_kernel(key) != value:
            return False  # another remote of the same MAC went
        return super().seen(deleted, key, value)


class NeighTable(L2Table[nl.NeighKey]):
    def __init__(self, family: int, ifindex: int) -> None:
        super().__init__("neigh", family, ifindex, nl.neigh_set, nl.neigh_del, show_dst)

    def claim(self, entry: Entry) -> tuple[nl.NeighKey, bytes | None] | None:
        fam, ifindex, state, _, dst, mac = entry
        if fam != self.family or ifindex != self.ifindex or dst is None:
            return None
        # a deleted neighbour is reported without its MAC (first as FAILED, then gone)
        return nl.NeighKey(fam, ifindex, dst), mac if state & nl.NUD_PERMANENT and mac else None


def show_mac(k: nl.FdbKey) -> str:
    return k.mac.hex(":")


def show_dst(k: nl.NeighKey) -> str:
    return str(ipaddress.ip_address(k.dst))


L2Tables = Sequence["L2Table[nl.FdbKey] | L2Table[nl.NeighKey]"]


def dump_l2(kernel: Kernel, family: int, ifindex: int, tables: L2Tables) -> None:
    """One dump of `family`'s entries on our device (AF_BRIDGE: the FDB), each filed with the
    first of that family's tables that claims it; then each of them loads what it got."""
    tables = [t for t in tables if t.family == family]
    for buf, off, end in kernel.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(family, ifindex)):
        entry = nl.parse_neigh(buf, off, end)
        for t in tables:
            if t.offer(entry):
                break
    for t in tables:
        t.load_staged()


def notify_l2(tables: L2Tables, deleted: bool, buf: bytes, off: int, end: int) -> bool:
    """A neighbour notification, for the first table that claims it; True if it mattered."""
    entry = nl.parse_neigh(buf, off, end)
    for t in tables:
        got = t.notify(deleted, entry)
        if got is not None:
            return got
    return False
