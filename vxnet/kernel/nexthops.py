"""The nexthop table's owner: our nexthop objects on our device, their dump and notifications.
Keys are ids (from kernel/nhids.py), values the gateway: family, device, protocol and onlink are
the table's, so a nexthop of ours that differs in them is kept as a value no desire equals."""

from __future__ import annotations

from dataclasses import dataclass

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel
from vxnet.kernel.routes import PROTO_VXNET
from vxnet.kernel.table import DeviceTable, dump_digest

_ODD = b"\0"  # appended to the gateway of a nexthop of ours that is not as we write them


def supported(kernel: Kernel) -> bool:
    """Kernels without nexthop objects (before 5.3, or built without) refuse the dump."""
    try:
        kernel.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request())
    except nl.NetlinkError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class NexthopDump:
    """Every gateway nexthop in the kernel, filed as it was read: ours on our device (id ->
    value) and the ids others hold (the id allocator must not give them); its digest."""

    ours: dict[int, bytes]
    foreign: set[int]
    digest: bytes | None = None


class NexthopTable(DeviceTable[int, bytes]):
    SET = (nl.RTM_NEWNEXTHOP, nl.NLM_F_REPLACE | nl.NLM_F_CREATE)
    DEL = (nl.RTM_DELNEXTHOP, 0)

    def __init__(self, family: int, ifindex: int) -> None:
        super().__init__("nexthop", ifindex, str)
        self.family = family

    def encode_set(self, key: int, value: bytes) -> bytes:
        return nl.nexthop_body(key, self.family, self.ifindex, value, PROTO_VXNET)

    def encode_del(self, key: int, value: bytes) -> bytes:
        return nl.nexthop_del_body(key, self.family)

    def _value(self, fam: int, proto: int, oif: int, gw: bytes, onlink: bool) -> bytes | None:
        """What the table keeps for a nexthop of ours on our device; None if it is not."""
        if proto != PROTO_VXNET or oif != self.ifindex:
            return None
        return gw if onlink and fam == self.family else gw + _ODD

    def dump(self, kernel: Kernel, ours_elsewhere: range, *, fresh_only: bool = False
             ) -> NexthopDump | None:
        """Every gateway nexthop; ids in `ours_elsewhere` with our protocol on another device
        are an earlier device's (ours to reuse), not foreign. `fresh_only`: None when the dump
        is the one the cache was loaded from and nothing changed the cache since (nexthop
        dumps are byte for byte the same while nothing changes)."""
        replies = kernel.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request())
        digest = dump_digest(replies)
        if fresh_only and self.says_nothing_new(digest):
            return None
        ours: dict[int, bytes] = {}
        foreign: set[int] = set()
        for buf, off, end in replies:
            got = nl.parse_nexthop(buf, off, end)
            if got is None:
                continue
            nhid, fam, proto, oif, gw, onlink = got
            value = self._value(fam, proto, oif, gw, onlink)
            if value is not None:
                ours[nhid] = value
            elif not (proto == PROTO_VXNET and nhid in ours_elsewhere):
                foreign.add(nhid)
        return NexthopDump(ours, foreign, digest)

    def load(self, dumped: NexthopDump) -> None:
        self.load_kernel(dumped.ours)
        if dumped.digest is not None:
            self.loaded_from(dumped.digest)

    @staticmethod
    def gateway(value: bytes) -> bytes:
        return value[:-1] if len(value) in (5, 17) else value

    def on_message(self, mtype: int, buf: bytes, off: int, end: int) -> int | None:
        """Fold a nexthop notification into the cache: the id if it was ours and is gone now
        (its routes went with it), 0 if it touched ours otherwise, None if not ours."""
        got = nl.parse_nexthop(buf, off, end)
        if got is None:
            return None
        nhid = got[0]
        if not self.wants(nhid) and not self.holds(nhid):
            return None
        value = self._value(*got[1:])
        if mtype == nl.RTM_DELNEXTHOP or value is None:
            self.kernel_changed(nhid, None)
            return nhid
        self.kernel_changed(nhid, value)
        return 0
