"""The route table's owner: our routes in the main table, how to dump them, how to read a
notification about one."""

from __future__ import annotations

import ipaddress

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel
from vxnet.kernel.table import DeviceTable

PROTO_VXNET = 118  # our route/nexthop protocol number (free in iproute2's rt_protos)


def _show(k: nl.RouteKey) -> str:
    return f"{ipaddress.ip_address(k.dst)}/{k.dst_len}"


class RouteTable(DeviceTable[nl.RouteKey, nl.Route]):
    """Ours: main-table routes of our family tagged with our protocol, or left by an older
    vxnet on our device with the kernel's default protocol."""

    def __init__(self, family: int, ifindex: int) -> None:
        super().__init__("route", ifindex, nl.route_set, nl.route_del, _show)
        self.family = family

    def owns(self, table: int, key: nl.RouteKey, r: nl.Route) -> bool:
        return table == nl.RT_TABLE_MAIN and key.family == self.family and (
            r.protocol == PROTO_VXNET or (r.oif == self.ifindex and r.protocol == nl.RTPROT_BOOT))

    def dump(self, kernel: Kernel) -> dict[nl.RouteKey, nl.Route]:
        out, owns, parse = {}, self.owns, nl.parse_route
        for buf, off, end in kernel.dump(nl.RTM_GETROUTE, nl.route_dump_request(self.family)):
            r = parse(buf, off, end)
            if r is not None and owns(r[0], r[1], r[2]):
                out[r[1]] = r[2]
        return out

    def resync(self, kernel: Kernel) -> None:
        self.load_kernel(self.dump(kernel))

    def on_message(self, mtype: int, buf: bytes, off: int, end: int) -> bool:
        """Fold a route notification into the cache; True if it touched ours."""
        r = nl.parse_route(buf, off, end)
        if r is None or r[0] != nl.RT_TABLE_MAIN or r[1].family != self.family:
            return False
        _, key, value = r
        if mtype == nl.RTM_DELROUTE:
            if self.in_kernel(key) != value:
                return False
            self.kernel_changed(key, None)
        elif self.owns(*r):
            self.kernel_changed(key, value)
        elif self.wants(key):  # someone else's route took our key
            self.kernel_changed(key, None)
        else:
            return False
        return True

    def nexthop_gone(self, nhid: int) -> None:
        """The kernel drops routes through a deleted nexthop without telling anyone."""
        for k, v in self.kernel_items():
            if v.nhid == nhid:
                self.kernel_changed(k, None)
