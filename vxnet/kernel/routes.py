"""The route table's owner: our routes in the main table, how to dump them, how to read a
notification about one. Keys are nl.route_key()s, values nl.route_value()s."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel
from vxnet.kernel.table import DeviceTable, dump_digest

PROTO_VXNET = 118  # our route/nexthop protocol number (free in iproute2's rt_protos)


def _show(k: bytes) -> str:
    return f"{ipaddress.ip_address(k[:-1])}/{k[-1]}"


class RouteTable(DeviceTable[bytes, bytes]):
    """Ours: main-table routes of our family tagged with our protocol, or left by an older
    vxnet on our device with the kernel's default protocol."""

    SET = (nl.RTM_NEWROUTE, nl.NLM_F_REPLACE | nl.NLM_F_CREATE)
    DEL = (nl.RTM_DELROUTE, 0)

    def __init__(self, family: int, ifindex: int) -> None:
        super().__init__("route", ifindex, _show)
        self.family = family

    def encode_set(self, key: bytes, value: bytes) -> bytes:
        return nl.route_body(self.family, key, value)

    encode_del = encode_set  # the kernel deletes the route the same message names

    def _ours(self, parsed: nl.Parsed | None) -> tuple[bytes, bytes] | None:
        """(key, value) of a main-table route of our family that is ours, else None."""
        if parsed is None:
            return None
        table, fam, dst, dlen, proto, nhid, oif, gw, onlink = parsed
        if table != nl.RT_TABLE_MAIN or fam != self.family or not (
                proto == PROTO_VXNET or (oif == self.ifindex and proto == nl.RTPROT_BOOT)):
            return None
        return nl.route_key(dst, dlen), nl.route_value(proto, nhid=nhid, oif=oif, gateway=gw,
                                                       onlink=onlink)

    def dump(self, kernel: Kernel) -> dict[bytes, bytes]:
        """Our routes in the kernel now (the cache is left as it is)."""
        return self._file(kernel.dump(nl.RTM_GETROUTE, nl.route_dump_request(self.family)))

    def _file(self, replies: Iterable[nl.Reply]) -> dict[bytes, bytes]:
        out, ours, parse = {}, self._ours, nl.parse_route
        for buf, off, end in replies:
            got = ours(parse(buf, off, end))
            if got is not None:
                out[got[0]] = got[1]
        return out

    def resync(self, kernel: Kernel) -> None:
        """A fresh dump into the cache. IPv4 route dumps are byte for byte the same while
        nothing changes, so a periodic resync parses one only when it differs from the one
        the cache was loaded from and the cache has not changed since."""
        replies = kernel.dump(nl.RTM_GETROUTE, nl.route_dump_request(self.family))
        digest = dump_digest(replies)
        if not self.says_nothing_new(digest):
            self.load_kernel(self._file(replies))
            self.loaded_from(digest)

    def on_message(self, mtype: int, buf: bytes, off: int, end: int) -> bool:
        """Fold a route notification into the cache; True if it touched ours."""
        parsed = nl.parse_route(buf, off, end)
        if parsed is None or parsed[0] != nl.RT_TABLE_MAIN or parsed[1] != self.family:
            return False
        ours = self._ours(parsed)
        key = nl.route_key(parsed[2], parsed[3])
        if mtype == nl.RTM_DELROUTE:
            if ours is None or self.in_kernel(key) != ours[1]:
                return False
            self.kernel_changed(key, None)
        elif ours is not None:
            self.kernel_changed(key, ours[1])
        elif self.wants(key):  # someone else's route took our key
            self.kernel_changed(key, None)
        else:
            return False
        return True

    def nexthop_gone(self, nhid: int) -> None:
        """The kernel drops routes through a deleted nexthop without telling anyone."""
        for k, v in self.kernel_items():
            if nl.route_nhid(v) == nhid:
                self.kernel_changed(k, None)
