"""A two-node lab per test, programmed directly through vxnet.kernel (no agent, no etcd)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress as ipa

import pytest

from vxnet.kernel import netlink as nl
from vxnet.kernel.device import DeviceSpec, default_name
from vxnet.kernel.links import open_links
from vxnet.kernel.mac import vtep_mac
from vxnet.kernel.monitor import Monitor
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.peer import Peer
from vxnet.kernel.reconciler import Reconciler
from vxnet.lab.netns import Netns
from vxnet.lab.topology import Lab, Node
from vxnet.nsenter import in_netns

NET4, NET6 = ipa.ip_network("10.244.0.0/16"), ipa.ip_network("fd00:10:244::/48")


def subnet(node: Node, version: int = 4):
    return ipa.ip_network(f"10.244.{node.index}.0/24" if version == 4
                          else f"fd00:10:244:{node.index}::/64")


def peer_of(node: Node, version: int = 4, *, key: str | None = None, net=None, public_ip=None,
            mac: str | None = None) -> Peer:
    """The node's peer as a lease would give it, any of its values overridden."""
    own = subnet(node, version)
    return Peer.of(key or f"{node.name}-v{version}", net or own,
                   public_ip or (node.ip if version == 4 else node.ip6), mac or vtep_mac(own))


@dataclasses.dataclass
class NodeKernel:
    """The kernel half of one lab node, as the agent will hold it."""

    node: Node
    sock: nl.RtnlSocket
    overlays: dict[int, Overlay]

    def plane(self, version: int = 4):
        return self.overlays[version].plane

    def keep(self, **kw) -> tuple[Monitor, asyncio.Task]:
        """The agent's kernel keepers for this node: monitor and reconciler, running."""
        overlays = list(self.overlays.values())
        mon = Monitor(overlays, Reconciler(overlays), netns=self.node.ns.name,
                      writer_portid=self.sock.portid, **kw)
        mon.open()
        return mon, asyncio.ensure_future(asyncio.gather(mon.run(), mon.reconciler.run()))


async def open_node(node: Node, versions=(4,), **kw) -> NodeKernel:
    with in_netns(node.ns.name):
        sock = nl.RtnlSocket()
    overlays = {}
    with open_links(node.ns.name) as links:
        parent = node.ifindex("eth0")
        for v in versions:
            sub = subnet(node, v)
            dev = DeviceSpec(default_name(1, v), 1, 8472, node.ip if v == 4 else node.ip6,
                             parent, vtep_mac(sub), 1450 if v == 4 else 1430, sub)
            overlays[v] = Overlay(links, sock, dev, network=NET4 if v == 4 else NET6,
                                  netns=node.ns.name, **kw)
    return NodeKernel(node, sock, overlays)


@pytest.fixture
def ns():
    """One namespace of its own (the nftables keepers' tests need no more)."""
    n = Netns.create("k")
    try:
        yield n
    finally:
        n.delete()


@pytest.fixture
def lab():
    lab = Lab("k")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def two_nodes(lab):
    return lab.add_node(1), lab.add_node(2)
