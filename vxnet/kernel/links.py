"""Links, addresses and the route to an address: the few device calls the agent makes (create and
fix its VXLAN device, read the external interface), on the same rtnetlink socket as the bulk path.

They used to go through pyroute2, which cost 10 MiB of the agent's memory and 0.1 s of its
start-up for a dozen calls; this is the part of rtnetlink they need and nothing else."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vxnet.ip import IPAddress, IPInterface, mac_bytes
from vxnet.kernel import netlink as nl
from vxnet.nsenter import in_netns

# linux/rtnetlink.h, if_link.h, if_addr.h
RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 18, 20, 21, 22
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VXLAN_ID, VXLAN_LINK, VXLAN_LOCAL, VXLAN_LEARNING, VXLAN_L2MISS, VXLAN_PORT, VXLAN_LOCAL6, \
    VXLAN_GBP = 1, 3, 4, 7, 13, 15, 17, 23
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
NLA_F_NESTED = 0x8000
NLM_F_EXCL = 0x200
ENODEV = 19

_IFADDR = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_BE16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Vxlan:
    """The attributes of a VXLAN link the agent compares with its spec."""

    vni: int
    port: int
    local: IPAddress | None
    parent: int
    learning: bool
    gbp: bool
    l2miss: bool


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    kind: str | None
    vxlan: Vxlan | None

    @property
    def up(self) -> bool:
        return bool(self.flags & nl.IFF_UP)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return nl.attr(kind | NLA_F_NESTED, b"".join(attrs))


def _u32(kind: int, value: int) -> bytes:
    return nl.attr(kind, nl.U32.pack(value))


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return nl.IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _mac(data: bytes) -> str:
    return data.hex(":")


def parse_link(buf: bytes, off: int, end: int) -> Link:
    index, flags = nl.parse_link(buf, off, end)
    attrs = nl.parse_attrs(buf, off + nl.IFINFO.size, end)
    kind = vxlan = None
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        nested = nl.parse_attrs(info, 0, len(info))
        kind = nested.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode() or None
        data = nested.get(IFLA_INFO_DATA)
        if kind == "vxlan" and data is not None:
            vxlan = _parse_vxlan(nl.parse_attrs(data, 0, len(data)))
    mtu = attrs.get(IFLA_MTU)
    return Link(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
                flags, nl.U32.unpack(mtu)[0] if mtu else 0, _mac(attrs.get(IFLA_ADDRESS, b"")),
                kind, vxlan)


def _parse_vxlan(a: dict[int, bytes]) -> Vxlan:
    def u32(k: int) -> int:
        return nl.U32.unpack(a[k])[0] if k in a else 0

    local = a.get(VXLAN_LOCAL) or a.get(VXLAN_LOCAL6)
    return Vxlan(u32(VXLAN_ID), _BE16.unpack(a[VXLAN_PORT])[0] if VXLAN_PORT in a else 0,
                 ipaddress.ip_address(local) if local else None, u32(VXLAN_LINK),
                 bool(a.get(VXLAN_LEARNING, b"\0")[0]), VXLAN_GBP in a,
                 bool(a.get(VXLAN_L2MISS, b"\0")[0]))


def parse_addr(buf: bytes, off: int, end: int) -> tuple[int, IPInterface] | None:
    """(ifindex, address/prefix) of an address message; the local address where the kernel
    gives both (point-to-point links: IFA_ADDRESS is the peer's)."""
    _, prefixlen, _, _, index = _IFADDR.unpack_from(buf, off)
    attrs = nl.parse_attrs(buf, off + _IFADDR.size, end)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if not raw:
        return None
    return index, ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen))


class Links:
    """Synchronous calls on a NETLINK_ROUTE socket (each a request and its acknowledgement,
    well under a millisecond; the socket's timeout bounds a kernel that never answers)."""

    def __init__(self, sock: nl.RtnlSocket) -> None:
        self.sock = sock

    def get(self, *, name: str | None = None, index: int = 0) -> Link | None:
        """The link of that name or index; None if there is none."""
        body = _ifinfo(index)
        if name is not None:
            body += nl.attr(IFLA_IFNAME, name.encode() + b"\0")
        try:
            replies = self.sock.request(RTM_GETLINK, 0, body, name or index)
        except nl.NetlinkError as e:
            if e.errno == ENODEV:
                return None
            raise
        return parse_link(*replies[0]) if replies else None

    def dump(self) -> list[Link]:
        return [parse_link(*m) for m in self.sock.dump(RTM_GETLINK, _ifinfo())]

    def add_vxlan(self, name: str, *, vni: int, port: int, parent: int, local: IPAddress,
                  mac: str, mtu: int, learning: bool, gbp: bool, l2miss: bool) -> None:
        data = [_u32(VXLAN_ID, vni), nl.attr(VXLAN_PORT, _BE16.pack(port)),
                _u32(VXLAN_LINK, parent),
                nl.attr(VXLAN_LOCAL6 if local.version == 6 else VXLAN_LOCAL, local.packed),
                nl.attr(VXLAN_LEARNING, bytes([learning]))]
        if gbp:
            data.append(nl.attr(VXLAN_GBP, b""))
        if l2miss:
            data.append(nl.attr(VXLAN_L2MISS, b"\1"))
        body = (_ifinfo() + nl.attr(IFLA_IFNAME, name.encode() + b"\0") +
                nl.attr(IFLA_ADDRESS, mac_bytes(mac)) +
                _u32(IFLA_MTU, mtu) +
                _nest(IFLA_LINKINFO, nl.attr(IFLA_INFO_KIND, b"vxlan"),
                      _nest(IFLA_INFO_DATA, *data)))
        self.sock.request(nl.RTM_NEWLINK, nl.NLM_F_CREATE | NLM_F_EXCL, body, name)

    def delete(self, index: int) -> None:
        self.sock.request(nl.RTM_DELLINK, 0, _ifinfo(index), index)

    def set(self, index: int, *, mtu: int | None = None, mac: str | None = None,
            up: bool | None = None, vxlan_learning: bool | None = None) -> None:
        """Change what is given in place. The VXLAN attribute goes in a request of its own: the
        kernel refuses a VXLAN change that comes with an MTU ("Cannot change mtu")."""
        if vxlan_learning is not None:
            self.sock.request(nl.RTM_NEWLINK, 0, _ifinfo(index) + _nest(
                IFLA_LINKINFO, nl.attr(IFLA_INFO_KIND, b"vxlan"), _nest(
                    IFLA_INFO_DATA, nl.attr(VXLAN_LEARNING, bytes([vxlan_learning])))), index)
        body = _ifinfo(index, nl.IFF_UP if up else 0, nl.IFF_UP if up is not None else 0)
        if mtu is not None:
            body += _u32(IFLA_MTU, mtu)
        if mac is not None:
            body += nl.attr(IFLA_ADDRESS, mac_bytes(mac))
        if len(body) > nl.IFINFO.size or up is not None:
            self.sock.request(nl.RTM_NEWLINK, 0, body, index)

    def addresses(self, index: int = 0, version: int = 0) -> list[tuple[int, IPInterface]]:
        """(ifindex, address) of every address, or of one interface's / one family's."""
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version, socket.AF_UNSPEC)
        out = []
        for m in self.sock.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0)):
            a = parse_addr(*m)
            if a is not None and (not index or a[0] == index) and (
                    not version or a[1].version == version):
                out.append(a)
        return out

    def _addr(self, mtype: int, flags: int, index: int, addr: IPInterface) -> None:
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        # IFA_F_NODAD: the agent's /128 is its alone, usable at once rather than after DAD
        body = _IFADDR.pack(family, addr.network.prefixlen,
                            IFA_F_NODAD if addr.version == 6 else 0, 0, index)
        body += nl.attr(IFA_LOCAL, addr.ip.packed) + nl.attr(IFA_ADDRESS, addr.ip.packed)
        self.sock.request(mtype, flags, body, f"address {addr}")

    def add_address(self, index: int, addr: IPInterface) -> None:
        self._addr(RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_REPLACE, index, addr)

    def del_address(self, index: int, addr: IPInterface) -> None:
        self._addr(RTM_DELADDR, 0, index, addr)

    def default_route_oif(self, family: int) -> int | None:
        """The interface of the main table's default route. Only default routes' attributes
        are read: a node holding 20 000 peer routes has them all in the same dump."""
        for buf, off, end in self.sock.dump(nl.RTM_GETROUTE, nl.route_dump_request(family)):
            if buf[off + 1] != 0:  # rtm_dst_len: not a default route
                continue
            attrs = nl.parse_attrs(buf, off + nl.RTMSG.size, end)
            table = nl.U32.unpack(attrs[nl.RTA_TABLE])[0] if nl.RTA_TABLE in attrs else buf[off + 4]
            if table == nl.RT_TABLE_MAIN and nl.RTA_OIF in attrs:
                oif: int = nl.U32.unpack(attrs[nl.RTA_OIF])[0]  # struct's Any; "=I": an int
                return oif
        return None

    def route_oif(self, dst: IPAddress) -> int | None:
        """The interface the kernel would send a packet to `dst` through (`ip route get`).
        No route raises NetlinkError (ENETUNREACH)."""
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        body = nl.RTMSG.pack(family, dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + nl.attr(
            nl.RTA_DST, dst.packed)
        for buf, off, end in self.sock.request(nl.RTM_GETROUTE, 0, body, f"route to {dst}"):
            raw = nl.parse_attrs(buf, off + nl.RTMSG.size, end).get(nl.RTA_OIF)
            if raw:
                index: int = nl.U32.unpack(raw)[0]  # struct's Any; "=I": an int
                return index
        return None


@contextlib.contextmanager
def open_links(netns: str | None = None) -> Iterator[Links]:
    """Links on a socket of its own, opened inside `netns` (None: ours), closed after."""
    with in_netns(netns):
        sock = nl.RtnlSocket()
    try:
        yield Links(sock)
    finally:
        sock.close()
