"""One overlay family on this node: its VXLAN device and the peer state programmed through it.

The overlay owns the device's lifecycle: it creates it, follows a new specification (the lease,
the underlay address, interface or MTU changed), parks the peer state while the device is gone
or down, and puts the device back when someone changes or deletes it. Every change to the device
happens here, one at a time (its lock); the reconciler skips an overlay while one is under way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

from vxnet.ip import IPAddress, IPNetwork
from vxnet.kernel import nexthops
from vxnet.kernel.dataplane import Dataplane, PlaneSpec
from vxnet.kernel.device import (
    DeviceSpec,
    EnsureResult,
    ensure_device,
    interface_networks,
    local_addresses,
)
from vxnet.kernel.links import Links, open_links
from vxnet.kernel.port import Kernel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OverlayStatus:
    device: str
    ifindex: int
    parked: bool
    local: str
    mac: str
    mtu: int
    port: int
    nexthops: bool
    repairs: int  # devices recreated (deleted, or changed in a way the kernel cannot undo)
    drift_repairs: int  # attributes put back in place


class Overlay:
    def __init__(self, links: Links, kernel: Kernel, device: DeviceSpec, *,
                 network: IPNetwork | None, direct_routing: bool = False,
                 use_nexthops: bool = True, neigh_on_demand: bool = False,
                 fdb_on_demand: bool = False, netns: str | None = None) -> None:
        """Ensure the device now; `links` and `kernel` work in `netns` (None: ours)."""
        self.netns = netns
        self._device = device
        self._lock = asyncio.Lock()
        self.ensured = ensure_device(links, device, netns)
        self.repairs = 0
        self.drift_repairs = 0
        self.plane = Dataplane(kernel, PlaneSpec(
            family=socket.AF_INET if device.subnet.version == 4 else socket.AF_INET6,
            ifindex=self.ensured.ifindex,
            network=network,
            direct_routing=direct_routing,
            use_nexthops=use_nexthops and nexthops.supported(kernel),
            vni=device.vni,
            neigh_on_demand=neigh_on_demand,
            fdb_on_demand=fdb_on_demand,
            **_surroundings(links, device, local_addresses(links))))

    @property
    def device(self) -> DeviceSpec:
        """The device as specified (and, between repairs, as the kernel has it)."""
        return self._device

    @property
    def busy(self) -> bool:
        """The device is being changed: passes wait (they would write to the old one)."""
        return self._lock.locked()

    @property
    def parked(self) -> bool:
        return self.plane.parked

    def park(self, why: str) -> None:
        """Our device is gone or down: no passes until repair() has it back."""
        if not self.plane.parked:
            log.warning("device %s is %s: parked until it is back", self._device.name, why)
        self.plane.parked = True

    async def follow(self, links: Links, device: DeviceSpec) -> bool:
        """A new specification, or new addresses on the node: the device follows, and peer
        state is rebuilt against it at the next resync. False if nothing changed."""
        own = local_addresses(links)
        if device == self._device and own == self.plane.spec.own_ips:
            return False
        async with self._lock:  # not while repair() puts the old spec back
            self._device = device
            self.ensured = ensure_device(links, device, self.netns)
            self.plane.rebind(self.ensured.ifindex, **_surroundings(links, device, own))
        return True

    async def repair(self) -> bool:
        """Put the device back as specified (raises what ensuring it raised). True if a full
        resync must follow: down or gone, the kernel dropped our routes, nexthops and
        neighbours, some without a word, and only a full pass knows what is left."""
        async with self._lock:  # the device is ours alone while we look at it
            with open_links(self.netns) as links:
                res = ensure_device(links, self._device, self.netns)
            self._record(res)
            resync = res.action != "reused" or self.plane.parked
            self.plane.parked = False
        return resync

    def _record(self, res: EnsureResult) -> None:
        self.ensured = res
        if res.action != "reused":
            self.repairs += 1
            self.plane.rebind(res.ifindex)
        elif res.changes:
            self.drift_repairs += 1

    def status(self) -> OverlayStatus:
        d = self._device
        return OverlayStatus(d.name, self.plane.spec.ifindex, self.plane.parked,
                             str(d.local_ip), d.mac, d.mtu, d.port, self.plane.spec.use_nexthops,
                             self.repairs, self.drift_repairs)


def _surroundings(links: Links, device: DeviceSpec, own: frozenset[IPAddress]
                  ) -> dict[str, Any]:
    """What the peer state depends on besides the device itself: our subnet, the underlay's
    family, interface and connected networks (DirectRouting), and this node's addresses."""
    parent = interface_networks(links, device.parent_ifindex, device.local_ip.version)
    return {"local_subnet": device.subnet, "underlay_version": device.local_ip.version,
            "parent_ifindex": device.parent_ifindex,
            "parent_networks": tuple(a.network for a in parent), "own_ips": own}
