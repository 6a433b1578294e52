"""One overlay family on this node: ensure its VXLAN device, then a Dataplane bound to it."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from vxnet.ip import IPNetwork
from vxnet.kernel import netlink as nl
from vxnet.kernel.dataplane import Dataplane, PlaneSpec
from vxnet.kernel.device import (
    DeviceSpec,
    EnsureResult,
    ensure_device,
    interface_networks,
    local_addresses,
)
from vxnet.kernel.links import Links


@dataclass(eq=False)
class Overlay:
    """Its VXLAN device and the peer state programmed through it."""

    device: DeviceSpec
    plane: Dataplane
    ensured: EnsureResult
    repairing: asyncio.Lock = field(default_factory=asyncio.Lock)


def nexthops_supported(sock: nl.RtnlSocket) -> bool:
    """Kernels without nexthop objects (before 5.3, or built without) refuse the dump."""
    try:
        sock.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request())
    except nl.NetlinkError:
        return False
    return True


def open_overlay(links: Links, sock: nl.RtnlSocket, device: DeviceSpec, *,
                       network: IPNetwork | None, direct_routing: bool = False,
                       use_nexthops: bool = True, neigh_on_demand: bool = False,
                       fdb_on_demand: bool = False) -> Overlay:
    ensured = ensure_device(links, device)
    parent_nets = interface_networks(links, device.parent_ifindex, device.local_ip.version)
    spec = PlaneSpec(
        family=socket.AF_INET if device.subnet.version == 4 else socket.AF_INET6,
        ifindex=ensured.ifindex,
        underlay_version=device.local_ip.version,
        local_subnet=device.subnet,
        network=network,
        parent_ifindex=device.parent_ifindex,
        parent_networks=tuple(a.network for a in parent_nets),
        direct_routing=direct_routing,
        use_nexthops=use_nexthops and nexthops_supported(sock),
        vni=device.vni,
        own_ips=local_addresses(links),
        neigh_on_demand=neigh_on_demand,
        fdb_on_demand=fdb_on_demand,
    )
    return Overlay(device, Dataplane(sock, spec), ensured)
