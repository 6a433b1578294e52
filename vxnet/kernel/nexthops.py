"""The nexthop table's owner: our nexthop objects on our device, their dump and notifications.
The ids themselves come from kernel/nhids.py."""

from __future__ import annotations

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel
from vxnet.kernel.routes import PROTO_VXNET
from vxnet.kernel.table import DeviceTable


def supported(kernel: Kernel) -> bool:
    """Kernels without nexthop objects (before 5.3, or built without) refuse the dump."""
    try:
        kernel.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request())
    except nl.NetlinkError:
        return False
    return True


class NexthopTable(DeviceTable[int, nl.Nexthop]):
    def __init__(self, ifindex: int) -> None:
        super().__init__("nexthop", ifindex, nl.nexthop_set, nl.nexthop_del, str)

    def owns(self, nh: nl.Nexthop) -> bool:
        return nh.protocol == PROTO_VXNET and nh.oif == self.ifindex

    def dump(self, kernel: Kernel) -> dict[int, nl.Nexthop]:
        """Every gateway nexthop in the kernel (ours or not: the id allocator needs to know
        which ids are taken)."""
        out = {}
        for buf, off, end in kernel.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request()):
            got = nl.parse_nexthop(buf, off, end)
            if got is not None:
                out[got[0]] = got[1]
        return out

    def load(self, dumped: dict[int, nl.Nexthop]) -> None:
        self.load_kernel({i: nh for i, nh in dumped.items() if self.owns(nh)})

    def on_message(self, mtype: int, buf: bytes, off: int, end: int) -> int | None:
        """Fold a nexthop notification into the cache: the id if it was ours and is gone now
        (its routes went with it), 0 if it touched ours otherwise, None if not ours."""
        got = nl.parse_nexthop(buf, off, end)
        if got is None:
            return None
        nhid, nh = got
        if not self.wants(nhid) and not self.holds(nhid):
            return None
        if mtype == nl.RTM_DELNEXTHOP or not self.owns(nh):
            self.kernel_changed(nhid, None)
            return nhid
        self.kernel_changed(nhid, nh)
        return 0
