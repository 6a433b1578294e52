"""Choosing the external interface, its public IP(s) and MTU, as flanneld does (see Selection);
--public-ip overrides the address. Start-up and the underlay follower share it."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import AddressT, IPInterface
from vxnet.kernel.device import interface_networks
from vxnet.kernel.links import Links
from vxnet.kernel.netlink import NetlinkError


class InterfaceUnavailable(VxnetError):
    """The external interface (or its address) is not there yet: start-up waits for it."""


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    name: str
    index: int
    mtu: int
    ip: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None


@dataclass(frozen=True, slots=True)
class Selection:
    """flanneld's ways of naming the external interface, tried in this order: --iface (names or
    addresses, several allowed), else --iface-regex (matched against each interface's addresses,
    then its name), else --iface-can-reach (the route to that address), else the default
    route's interface. The first match wins."""

    ifaces: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    can_reach: str | None = None
    public_ip: str | None = None
    public_ipv6: str | None = None

    def __post_init__(self) -> None:
        for r in self.regexes:
            try:
                re.compile(r)
            except re.error as e:
                raise VxnetError(f"--iface-regex {r!r}: {e}") from None
        if self.can_reach is not None:
            try:
                ipaddress.ip_address(self.can_reach)
            except ValueError:
                raise VxnetError(f"--iface-can-reach: {self.can_reach!r} is not an IP "
                                 "address") from None


def _select_index(links: Links, sel: Selection, want4: bool) -> int:
    if sel.ifaces:
        addrs = links.addresses()
        for iface in sel.ifaces:
            try:
                addr = ipaddress.ip_address(iface)
            except ValueError:
                link = links.get(name=iface)
                if link is not None:
                    return link.index
            else:
                for index, a in addrs:
                    if a.ip == addr:
                        return index
        raise InterfaceUnavailable(f"--iface: none of {', '.join(sel.ifaces)} is present")
    if sel.regexes:
        addrs = links.addresses()
        names = {link.index: link.name for link in links.dump()}
        for r in sel.regexes:
            pattern = re.compile(r)
            for index, a in addrs:  # search, as Go's MatchString: anywhere in the text
                if not (a.ip.is_loopback or a.ip.is_link_local) and pattern.search(str(a.ip)):
                    return index
            for index, name in sorted(names.items()):
                if name and name != "lo" and pattern.search(name):
                    return index
        raise InterfaceUnavailable(f"--iface-regex: no interface matches "
                                   f"{', '.join(sel.regexes)}")
    if sel.can_reach:
        try:
            oif = links.route_oif(ipaddress.ip_address(sel.can_reach))
        except NetlinkError as e:
            raise InterfaceUnavailable(f"--iface-can-reach {sel.can_reach}: no route "
                                       f"({e})") from None
        if oif:
            return oif
        raise InterfaceUnavailable(f"--iface-can-reach {sel.can_reach}: no route")
    oif = links.default_route_oif(socket.AF_INET if want4 else socket.AF_INET6)
    if oif is None:
        raise InterfaceUnavailable("no default route to pick the external interface from; "
                                   "give --iface")
    return oif


def find_external(links: Links, sel: Selection, want4: bool, want6: bool
                  ) -> ExternalInterface:
    index = _select_index(links, sel, want4)
    link = links.get(index=index)
    if link is None:  # gone between the two looks
        raise InterfaceUnavailable(f"interface {index} vanished while being looked at")
    ip4 = ip6 = None
    if want4:
        ip4 = _pick(sel.public_ip, interface_networks(links, index, 4), link.name, "--public-ip",
                    ipaddress.IPv4Address)
    if want6:
        ip6 = _pick(sel.public_ipv6, interface_networks(links, index, 6), link.name,
                    "--public-ipv6", ipaddress.IPv6Address)
    return ExternalInterface(link.name, index, link.mtu, ip4, ip6)


def _pick(override: str | None, addrs: list[IPInterface], name: str, flag: str,
          cls: type[AddressT]) -> AddressT:
    """The override, else the interface's first address of `cls`'s family. An override of the
    other family is refused: it would be published as this family's public IP."""
    family = "IPv6" if cls is ipaddress.IPv6Address else "IPv4"
    if override:
        try:
            ip = ipaddress.ip_address(override)
        except ValueError:
            raise VxnetError(f"{flag}: {override!r} is not an IP address") from None
        if not isinstance(ip, cls):
            raise VxnetError(f"{flag}: {override!r} is not an {family} address")
        return ip
    for a in addrs:  # interface_networks() asked for this family only
        if isinstance(a.ip, cls):
            return a.ip
    raise InterfaceUnavailable(f"interface {name} has no global {family} address")
