"""The VXLAN device (pyroute2): ensure it exists with exactly our attributes, never disturbing a
compatible one. A device whose VNI, port, local IP, parent or GBP differ is recreated with the
same MAC; MTU, MAC, learning, addresses, up state, checksum offload and the neighbour solicit
sysctls are fixed in place."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

from vxnet.errors import VxnetError
from vxnet.ip import IPAddress, IPNetwork
from vxnet.kernel.ethtool import set_tx_checksum, tx_checksum
from vxnet.nsenter import in_netns

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = {4: 50, 6: 70}  # outer IP + UDP + VXLAN + inner Ethernet


class DeviceError(VxnetError):
    pass


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    vni: int
    port: int
    local_ip: IPAddress
    parent_ifindex: int
    mac: str
    mtu: int
    subnet: IPNetwork  # its network address goes on the device as /32 or /128
    gbp: bool = False
    learning: bool = False
    tx_checksum: bool | None = None  # transmit checksum offload; None: as the kernel has it
    l2miss: bool = False  # report FDB misses (on-demand FDB); the kernel can't change it in place
    app_solicit: bool = False  # neighbour misses asked of us (on-demand neighbours), not ARP/NDP

    @property
    def address(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface((self.subnet.network_address, self.subnet.max_prefixlen))


@dataclass(frozen=True, slots=True)
class EnsureResult:
    ifindex: int
    action: str  # "reused", "created", "recreated"
    changes: tuple[str, ...] = ()


def iproute(netns: str | None = None) -> AsyncIPRoute:
    """pyroute2 on a netlink socket opened inside `netns` (None: our own). We open the socket
    ourselves: pyroute2's own netns support forks a helper per socket (and, by default, creates
    the namespace when its listing misses it), which misplaced sockets in long test runs."""
    if netns is None:
        return AsyncIPRoute()
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    return AsyncIPRoute(use_socket=sock)


def default_name(vni: int, version: int) -> str:
    """flannel's names: flannel.<VNI> for the IPv4 overlay, flannel-v6.<VNI> for IPv6."""
    return f"flannel.{vni}" if version == 4 else f"flannel-v6.{vni}"


def device_mtu(underlay_mtu: int, underlay_version: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD[underlay_version]


async def get_link(ipr: AsyncIPRoute, **match: Any) -> Any | None:
    try:
        links = await ipr.link("get", **match)
    except PyNetlinkError as e:
        if e.code == 19:  # ENODEV
            return None
        raise
    return links[0] if links else None


def _incompatible(link: Any, spec: DeviceSpec) -> list[str]:
    if link.get(("linkinfo", "kind")) != "vxlan":
        return [f"kind {link.get(('linkinfo', 'kind'))} is not vxlan"]
    info = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    local = info.get_attr("IFLA_VXLAN_LOCAL") or info.get_attr("IFLA_VXLAN_LOCAL6")
    have = {
        "VNI": info.get_attr("IFLA_VXLAN_ID"),
        "port": info.get_attr("IFLA_VXLAN_PORT"),
        "local IP": ipaddress.ip_address(local) if local else None,
        "parent": info.get_attr("IFLA_VXLAN_LINK"),
        "GBP": info.get_attr("IFLA_VXLAN_GBP") is not None,
        "L2 miss": bool(info.get_attr("IFLA_VXLAN_L2MISS")),
    }
    want = {"VNI": spec.vni, "port": spec.port, "local IP": spec.local_ip,
            "parent": spec.parent_ifindex, "GBP": spec.gbp, "L2 miss": spec.l2miss}
    return [f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k]]


async def ensure_device(ipr: AsyncIPRoute, spec: DeviceSpec, netns: str | None = None
                        ) -> EnsureResult:
    """Our device, exactly as specified: created if missing, recreated (same MAC) where the
    kernel cannot change an attribute in place, fixed in place otherwise. `netns` is where
    `ipr` works (for the ethtool ioctl)."""
    link = await get_link(ipr, ifname=spec.name)
    action = "reused"
    if link is not None:
        diff = _incompatible(link, spec)
        if diff:
            log.warning("device %s is incompatible (%s): recreating it", spec.name,
                        "; ".join(diff))
            await ipr.link("del", index=link["index"])
            link, action = None, "recreated"
    if link is None:
        await _create(ipr, spec)
        link = await get_link(ipr, ifname=spec.name)
        if link is None:
            raise DeviceError(f"device {spec.name} vanished right after being created")
        action = "created" if action == "reused" else action
    changes = await _fix_in_place(ipr, link, spec)
    changes += _fix_solicit(spec, netns)
    if spec.tx_checksum is not None and tx_checksum(spec.name, netns) != spec.tx_checksum:
        set_tx_checksum(spec.name, spec.tx_checksum, netns)
        changes.append(f"tx checksum offload {'on' if spec.tx_checksum else 'off'}")
    if action != "reused" or changes:
        log.info("device %s %s (%s)", spec.name, action, ", ".join(changes) or "no changes")
    return EnsureResult(link["index"], action, tuple(changes))


async def _create(ipr: AsyncIPRoute, spec: DeviceSpec) -> None:
    local = ("vxlan_local6" if spec.local_ip.version == 6 else "vxlan_local", str(spec.local_ip))
    attrs: dict[str, Any] = {
        "ifname": spec.name, "kind": "vxlan", "vxlan_id": spec.vni, "vxlan_port": spec.port,
        "vxlan_link": spec.parent_ifindex, "vxlan_learning": int(spec.learning),
        local[0]: local[1], "address": spec.mac, "mtu": spec.mtu,
    }
    if spec.gbp:
        attrs["vxlan_gbp"] = True
    if spec.l2miss:
        attrs["vxlan_l2miss"] = True
    try:
        await ipr.link("add", **attrs)
    except PyNetlinkError as e:
        raise DeviceError(f"cannot create VXLAN device {spec.name} (VNI {spec.vni}, port "
                          f"{spec.port}, local {spec.local_ip}): {e}") from None


async def _fix_in_place(ipr: AsyncIPRoute, link: Any, spec: DeviceSpec) -> list[str]:
    changes = []
    index = link["index"]
    if link.get("address") != spec.mac:
        await ipr.link("set", index=index, address=spec.mac)
        changes.append(f"MAC {link.get('address')} -> {spec.mac}")
    if link.get("mtu") != spec.mtu:
        await ipr.link("set", index=index, mtu=spec.mtu)
        changes.append(f"MTU {link.get('mtu')} -> {spec.mtu}")
    info = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    if bool(info.get_attr("IFLA_VXLAN_LEARNING")) != spec.learning:
        await ipr.link("set", index=index, kind="vxlan", vxlan_learning=int(spec.learning))
        changes.append(f"learning {'on' if spec.learning else 'off'}")
    want = spec.address
    have = await interface_networks(ipr, index, want.version)
    for addr in have:
        if addr != want:  # a stale address from an earlier lease
            await ipr.addr("del", index=index, address=str(addr.ip),
                           prefixlen=addr.network.prefixlen)
            changes.append(f"removed address {addr}")
    if want not in have:
        # IFA_F_NODAD: the /128 is ours alone, usable at once rather than after DAD
        await ipr.addr("add", index=index, address=str(want.ip), prefixlen=want.network.prefixlen,
                       **({"flags": 0x02} if want.version == 6 else {}))
        changes.append(f"address {want}")
    if not link["flags"] & 1:
        await ipr.link("set", index=index, state="up")
        changes.append("up")
    return changes


# the device's neighbour sysctls: with on-demand neighbours the kernel asks us (app_solicit)
# and never sends ARP/NDP into the overlay, where no one would answer
_SOLICIT_ON_DEMAND = {"app_solicit": 3, "ucast_solicit": 0, "mcast_solicit": 0}
_SOLICIT_DEFAULT = {"app_solicit": 0, "ucast_solicit": 3, "mcast_solicit": 3}


def _fix_solicit(spec: DeviceSpec, netns: str | None) -> list[str]:
    base = f"/proc/sys/net/ipv{spec.subnet.version}/neigh/{spec.name}"
    changes = []
    with in_netns(netns):
        have = {k: _read_int(f"{base}/{k}") for k in _SOLICIT_ON_DEMAND}
        if not spec.app_solicit and have["app_solicit"] in (0, None):
            return []  # up front: whatever else is set there is not used
        want = _SOLICIT_ON_DEMAND if spec.app_solicit else _SOLICIT_DEFAULT
        for key, value in want.items():
            if have[key] not in (value, None):
                with open(f"{base}/{key}", "w") as f:
                    f.write(str(value))
                changes.append(f"{key} {value}")
    return changes


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except FileNotFoundError:  # IPv6 off on the device: nothing to ask about
        return None


async def interface_networks(ipr: AsyncIPRoute, index: int, version: int) -> list[
        ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Global addresses of an interface, as interfaces (address + connected network)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    out = []
    async for a in await ipr.addr("dump", index=index, family=family):
        addr = ipaddress.ip_interface((a.get("IFA_ADDRESS"), a["prefixlen"]))
        if not (addr.version == 6 and addr.ip.is_link_local):
            out.append(addr)
    return out


async def local_addresses(ipr: AsyncIPRoute) -> frozenset[IPAddress]:
    """Every address on this node, whatever the interface: none of them may be a peer's."""
    return frozenset({ipaddress.ip_address(a.get("IFA_ADDRESS")) async for a in
                      await ipr.addr("dump")})
