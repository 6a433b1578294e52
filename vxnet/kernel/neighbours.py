"""The owners of the layer-2 tables on our device: permanent ARP/NDP entries (peer .0 -> VTEP
MAC) and permanent FDB entries (VTEP MAC -> public IP). Both come from the same netlink
messages (RTM_*NEIGH; AF_BRIDGE for the FDB), so one dump per family is filed with whichever
table claims each entry -- the on-demand answers of kernel/resolver.py included.

Keys and values are bytes: a neighbour is address -> MAC, an FDB entry MAC -> remote IP; the
family, the device and the state are the table's."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel
from vxnet.kernel.table import DeviceTable, dump_digest

NO_MAC = bytes(6)
Entry = tuple[int, int, int, int, bytes | None, bytes | None]  # nl.parse_neigh's


class L2Table(DeviceTable[bytes, bytes]):
    """A table fed by neighbour messages on one device; its entries written in `state`."""

    SET = (nl.RTM_NEWNEIGH, nl.NLM_F_REPLACE | nl.NLM_F_CREATE)
    DEL = (nl.RTM_DELNEIGH, 0)

    def __init__(self, name: str, family: int, ifindex: int, show: Callable[[bytes], str],
                 state: int = nl.NUD_PERMANENT) -> None:
        super().__init__(name, ifindex, show)
        self.family = family  # of its messages: AF_BRIDGE for FDB entries
        self.state = state
        self._staged: dict[bytes, bytes] = {}

    def claim(self, entry: Entry) -> tuple[bytes, bytes | None] | None:
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

    def dump(self, kernel: Kernel) -> dict[bytes, bytes]:
        """This table's entries in the kernel now (the cache is left as it is)."""
        for buf, off, end in kernel.dump(nl.RTM_GETNEIGH,
                                         nl.neigh_dump_request(self.family, self.ifindex)):
            self.offer(nl.parse_neigh(buf, off, end))
        entries, self._staged = self._staged, {}
        return entries

    def load(self, entries: dict[bytes, bytes]) -> None:
        """A fresh dump's entries of ours."""
        self.load_kernel(entries)

    # -- notifications ----------
    def notify(self, deleted: bool, entry: Entry) -> bool | None:
        """A notification: None if not ours, else whether it changed what we know."""
        got = self.claim(entry)
        return None if got is None else self.seen(deleted, got[0], got[1])

    def seen(self, deleted: bool, key: bytes, value: bytes | None) -> bool:
        self.kernel_changed(key, None if deleted else value)
        return True


class FdbTable(L2Table):
    """VTEP MAC -> remote IP."""

    def __init__(self, ifindex: int, name: str = "fdb", state: int = nl.NUD_PERMANENT) -> None:
        super().__init__(name, nl.AF_BRIDGE, ifindex, show_mac, state)

    def encode_set(self, key: bytes, value: bytes) -> bytes:
        return nl.fdb_body(self.ifindex, key, value, self.state)

    def encode_del(self, key: bytes, value: bytes) -> bytes:
        return nl.fdb_body(self.ifindex, key, value)

    def claim(self, entry: Entry) -> tuple[bytes, bytes | None] | None:
        fam, ifindex, state, flags, dst, mac = entry
        if fam != nl.AF_BRIDGE or ifindex != self.ifindex or dst is None or mac is None \
                or mac == NO_MAC:  # flood entries are not ours
            return None
        ours = state & nl.NUD_PERMANENT and flags & nl.NTF_SELF
        return mac, dst if ours else None

    def seen(self, deleted: bool, key: bytes, value: bytes | None) -> bool:
        if deleted and self.in_kernel(key) != value:
            return False  # another remote of the same MAC went
        return super().seen(deleted, key, value)


class NeighTable(L2Table):
    """Overlay address -> VTEP MAC."""

    def __init__(self, family: int, ifindex: int, name: str = "neigh",
                 state: int = nl.NUD_PERMANENT) -> None:
        super().__init__(name, family, ifindex, show_dst, state)

    def encode_set(self, key: bytes, value: bytes) -> bytes:
        return nl.neigh_body(self.family, self.ifindex, key, value, self.state)

    def encode_del(self, key: bytes, value: bytes) -> bytes:
        return nl.neigh_del_body(self.family, self.ifindex, key)

    def claim(self, entry: Entry) -> tuple[bytes, bytes | None] | None:
        fam, ifindex, state, _, dst, mac = entry
        if fam != self.family or ifindex != self.ifindex or dst is None:
            return None
        # a deleted neighbour is reported without its MAC (first as FAILED, then gone)
        return dst, mac if state & nl.NUD_PERMANENT and mac else None


def show_mac(k: bytes) -> str:
    return k.hex(":")


def show_dst(k: bytes) -> str:
    return str(ipaddress.ip_address(k))


L2Tables = Sequence[L2Table]


def dump_l2(kernel: Kernel, family: int, ifindex: int, tables: L2Tables) -> None:
    """One dump of `family`'s entries on our device (AF_BRIDGE: the FDB), each filed with the
    first of that family's tables that claims it; then each of them loads what it got. A dump
    that says what the last one loaded said (cache ages aside) is not parsed again."""
    tables = [t for t in tables if t.family == family]
    replies = kernel.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(family, ifindex))
    # the same entries as when the tables were loaded, none changed since: nothing to file
    digest = dump_digest(replies, strip_cacheinfo=True)
    if all(t.says_nothing_new(digest) for t in tables):
        return
    for buf, off, end in replies:
        entry = nl.parse_neigh(buf, off, end)
        for t in tables:
            if t.offer(entry):
                break
    for t in tables:
        t.load_staged()
        t.loaded_from(digest)


def notify_l2(tables: L2Tables, deleted: bool, buf: bytes, off: int, end: int) -> bool:
    """A neighbour notification, for the first table that claims it; True if it mattered."""
    entry = nl.parse_neigh(buf, off, end)
    for t in tables:
        got = t.notify(deleted, entry)
        if got is not None:
            return got
    return False
