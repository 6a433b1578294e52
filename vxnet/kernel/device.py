"""The VXLAN device: ensure it exists with exactly our attributes, never disturbing a
compatible one. A device whose VNI, port, local IP, parent or GBP differ is recreated with the
same MAC; MTU, MAC, learning, addresses, up state, checksum offload and the neighbour solicit
sysctls are fixed in place."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import IPAddress, IPInterface, IPNetwork
from vxnet.kernel import netlink as nl
from vxnet.kernel.ethtool import set_tx_checksum, tx_checksum
from vxnet.kernel.links import Link, Links
from vxnet.nsenter import in_netns

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = {4: 50, 6: 70}  # outer IP + UDP + VXLAN + inner Ethernet
IFNAMSIZ = 16  # with its terminating NUL


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
    def address(self) -> IPInterface:
        return ipaddress.ip_interface((self.subnet.network_address, self.subnet.max_prefixlen))


@dataclass(frozen=True, slots=True)
class EnsureResult:
    ifindex: int
    action: str  # "reused", "created", "recreated"
    changes: tuple[str, ...] = ()


def default_name(vni: int, version: int) -> str:
    """flannel's names: flannel.<VNI> for the IPv4 overlay, flannel-v6.<VNI> for IPv6."""
    return f"flannel.{vni}" if version == 4 else f"flannel-v6.{vni}"


def device_mtu(underlay_mtu: int, underlay_version: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD[underlay_version]


def _incompatible(link: Link, spec: DeviceSpec) -> list[str]:
    if link.vxlan is None:
        return [f"kind {link.kind} is not vxlan"]
    v = link.vxlan
    have = {"VNI": v.vni, "port": v.port, "local IP": v.local, "parent": v.parent,
            "GBP": v.gbp, "L2 miss": v.l2miss}
    want = {"VNI": spec.vni, "port": spec.port, "local IP": spec.local_ip,
            "parent": spec.parent_ifindex, "GBP": spec.gbp, "L2 miss": spec.l2miss}
    return [f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k]]


def ensure_device(links: Links, spec: DeviceSpec, netns: str | None = None) -> EnsureResult:
    """Our device, exactly as specified: created if missing, recreated (same MAC) where the
    kernel cannot change an attribute in place, fixed in place otherwise. `netns` is where
    `links` works (for the ethtool ioctl and the sysctls)."""
    if len(spec.name.encode()) > IFNAMSIZ - 1:
        raise DeviceError(f"device name {spec.name!r} is longer than the kernel's "
                          f"{IFNAMSIZ - 1} characters (VNI {spec.vni} is too large for flannel's "
                          "names flannel.<VNI> and flannel-v6.<VNI>)")
    link = links.get(name=spec.name)
    action = "reused"
    if link is not None:
        diff = _incompatible(link, spec)
        if diff:
            log.warning("device %s is incompatible (%s): recreating it", spec.name,
                        "; ".join(diff))
            links.delete(link.index)
            link, action = None, "recreated"
    if link is None:
        try:
            links.add_vxlan(spec.name, vni=spec.vni, port=spec.port, parent=spec.parent_ifindex,
                            local=spec.local_ip, mac=spec.mac, mtu=spec.mtu,
                            learning=spec.learning, gbp=spec.gbp, l2miss=spec.l2miss)
        except nl.NetlinkError as e:
            raise DeviceError(f"cannot create VXLAN device {spec.name} (VNI {spec.vni}, port "
                              f"{spec.port}, local {spec.local_ip}): {e}") from None
        link = links.get(name=spec.name)
        if link is None:
            raise DeviceError(f"device {spec.name} vanished right after being created")
        action = "created" if action == "reused" else action
    changes = _fix_in_place(links, link, spec)
    changes += _fix_solicit(spec, netns)
    if spec.tx_checksum is not None and tx_checksum(spec.name, netns) != spec.tx_checksum:
        set_tx_checksum(spec.name, spec.tx_checksum, netns)
        changes.append(f"tx checksum offload {'on' if spec.tx_checksum else 'off'}")
    if action != "reused" or changes:
        log.info("device %s %s (%s)", spec.name, action, ", ".join(changes) or "no changes")
    return EnsureResult(link.index, action, tuple(changes))


def _fix_in_place(links: Links, link: Link, spec: DeviceSpec) -> list[str]:
    mac = spec.mac if link.mac != spec.mac else None
    mtu = spec.mtu if link.mtu != spec.mtu else None
    learning = spec.learning if (link.vxlan is not None and link.vxlan.learning) != spec.learning \
        else None
    up = None if link.up else True
    changes = []
    if mac:
        changes.append(f"MAC {link.mac} -> {mac}")
    if mtu:
        changes.append(f"MTU {link.mtu} -> {mtu}")
    if learning is not None:
        changes.append(f"learning {'on' if learning else 'off'}")
    if up:
        changes.append("up")
    if changes:  # one call: it sends what is given, the VXLAN attribute on its own
        links.set(link.index, mac=mac, mtu=mtu, vxlan_learning=learning, up=up)
    want = spec.address
    have = interface_networks(links, link.index, want.version)
    for addr in have:
        if addr != want:  # a stale address from an earlier lease
            links.del_address(link.index, addr)
            changes.append(f"removed address {addr}")
    if want not in have:
        links.add_address(link.index, want)
        changes.append(f"address {want}")
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


def interface_networks(links: Links, index: int, version: int) -> list[IPInterface]:
    """Global addresses of an interface, as interfaces (address + connected network)."""
    return [a for _, a in links.addresses(index, version)
            if not (a.version == 6 and a.ip.is_link_local)]


def local_addresses(links: Links) -> frozenset[IPAddress]:
    """Every address on this node, whatever the interface: none of them may be a peer's."""
    return frozenset(a.ip for _, a in links.addresses())
