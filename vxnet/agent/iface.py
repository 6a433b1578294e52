"""Choosing the external interface, its public IP(s) and MTU, as flanneld does: --iface by name
or address, else the interface of the default route; --public-ip overrides the address."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute

from vxnet.errors import VxnetError
from vxnet.kernel.device import get_link, interface_networks


class InterfaceUnavailable(VxnetError):
    """The external interface (or its address) is not there yet: start-up waits for it."""


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    name: str
    index: int
    mtu: int
    ip: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None


async def _default_route_index(ipr: AsyncIPRoute, family: int) -> int | None:
    async for r in await ipr.route("dump", family=family):
        if r["dst_len"] == 0 and r.get("table") == 254 and r.get("oif"):
            return r.get("oif")
    return None


async def find_external(ipr: AsyncIPRoute, iface: str | None, public_ip: str | None,
                        want4: bool, want6: bool, public_ipv6: str | None = None
                        ) -> ExternalInterface:
    index = None
    if iface:
        try:
            addr = ipaddress.ip_address(iface)
        except ValueError:
            link = await get_link(ipr, ifname=iface)
            if link is None:
                raise InterfaceUnavailable(f"--iface: no interface named {iface!r}") from None
            index = link["index"]
        else:
            async for a in await ipr.addr("dump"):
                if ipaddress.ip_address(a.get("IFA_ADDRESS")) == addr:
                    index = a["index"]
                    break
            if index is None:
                raise InterfaceUnavailable(f"--iface: no interface has the address {addr}")
    else:
        index = await _default_route_index(ipr, socket.AF_INET if want4 else socket.AF_INET6)
        if index is None:
            raise InterfaceUnavailable("no default route to pick the external interface "
                                       "from; give --iface")
    link = await get_link(ipr, index=index)
    name = link.get("ifname")
    ip4 = ip6 = None
    if want4:
        ip4 = _pick(public_ip, await interface_networks(ipr, index, 4), name, "--public-ip")
    if want6:
        ip6 = _pick(public_ipv6, await interface_networks(ipr, index, 6), name, "--public-ipv6")
    return ExternalInterface(name, index, link.get("mtu"), ip4, ip6)  # type: ignore[arg-type]


def _pick(override: str | None, addrs: list, name: str, flag: str) -> ipaddress._BaseAddress:
    if override:
        try:
            return ipaddress.ip_address(override)
        except ValueError:
            raise VxnetError(f"{flag}: {override!r} is not an IP address") from None
    if not addrs:
        version = "IPv6" if flag.endswith("v6") else "IPv4"
        raise InterfaceUnavailable(f"interface {name} has no global {version} address")
    return addrs[0].ip
