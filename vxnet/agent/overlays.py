"""This node's overlays, one per enabled address family, built whole at start-up from the
node's shape and brought in line with it whenever it changes (lease, address, interface, MTU)."""

from __future__ import annotations

from collections.abc import Iterator

from vxnet.agent.iface import ExternalInterface
from vxnet.agent.node import Node
from vxnet.ip import IPAddress
from vxnet.kernel.links import open_links
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.port import Kernel
from vxnet.store.lease import Lease


class Overlays:
    def __init__(self, kernel: Kernel, node: Node) -> None:
        """Create (or adopt) one VXLAN device per enabled family."""
        cfg = node.cfg
        self._by_version: dict[int, Overlay] = {}
        self._ips: tuple[tuple[int, ...], frozenset[IPAddress]] = ((), frozenset())
        with open_links() as links:
            for version in node.families():
                spec = node.device_spec(version)
                pool = cfg.ipv4 if version == 4 else cfg.ipv6
                self._by_version[version] = Overlay(
                    links, kernel, spec, network=pool.network if pool else None,
                    direct_routing=cfg.backend.direct_routing,
                    neigh_on_demand=spec.app_solicit, fdb_on_demand=spec.l2miss)

    def __iter__(self) -> Iterator[Overlay]:
        return iter(self._by_version.values())

    def items(self) -> Iterator[tuple[int, Overlay]]:
        return iter(self._by_version.items())

    def __getitem__(self, version: int) -> Overlay:
        return self._by_version[version]

    def __contains__(self, version: int) -> bool:
        return version in self._by_version

    @property
    def mtu(self) -> int:
        """For pods: the smaller overlay's, or IPv6 packets sized for the IPv4 overlay would
        be refused by their own node ("packet too big")."""
        return min(ov.device.mtu for ov in self)

    async def follow(self, node: Node, ext: ExternalInterface, lease: Lease) -> bool:
        """Bring every device in line with this underlay and lease; True if any changed."""
        changed = False
        with open_links() as links:
            for version, ov in self.items():
                spec = node.device_spec(version, ext, lease)
                changed = await ov.follow(links, spec) or changed
        return changed

    def peer_ips(self) -> frozenset[IPAddress]:
        """Where VXLAN may come from: the public IPs of the peers we program (rebuilt only
        when one came or went, not for every batch of events)."""
        generations = tuple(ov.plane.admission.ips_generation for ov in self)
        if generations != self._ips[0]:
            self._ips = generations, frozenset().union(*(ov.plane.admission.ips for ov in self))
        return self._ips[1]
