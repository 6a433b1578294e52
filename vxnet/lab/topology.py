"""Lab wiring: a fabric namespace whose bridge is the underlay switch, node namespaces attached
to it by veth, and pod namespaces attached to their node. Addresses follow design.md's plan:
underlay 198.51.100.0/24 and 2001:db8:100::/64, pods 10.244.0.0/16 and fd00:10:244::/48.
Everything is created inside namespaces the lab owns; close() removes them all."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from vxnet.lab.netns import Netns

UNDERLAY4 = ipaddress.IPv4Network("198.51.100.0/24")
UNDERLAY6 = ipaddress.IPv6Network("2001:db8:100::/64")
# the second segment, behind the router namespace (cross-subnet tests)
UNDERLAY4B = ipaddress.IPv4Network("203.0.113.0/24")
UNDERLAY6B = ipaddress.IPv6Network("2001:db8:101::/64")


@dataclass
class Pod:
    ns: Netns
    ip: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None
    cni_result: dict[str, Any] | None = None  # what the CNI plugin answered, for pods it wired


@dataclass
class Node:
    index: int
    ns: Netns
    ip: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    segment: int = 0  # 0: on the fabric's bridge; 1: behind the router
    pods: list[Pod] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def ifindex(self, ifname: str) -> int:
        index: int = json.loads(self.ns.ip("-j", "link", "show", ifname).stdout)[0]["ifindex"]
        return index


def _unwind_on_sigterm() -> None:
    """A benchmark or demo ended by SIGTERM (kill, a timeout) unwinds as Ctrl-C does, so the
    namespaces and processes of its labs are removed instead of left behind. Only from the
    main thread, and only where nobody has a handler of their own."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


class Lab:
    def __init__(self, stem: str = "lab", segments: int = 1) -> None:
        """segments=2: a router namespace joins a second underlay segment (203.0.113.0/24,
        2001:db8:101::/64, its own bridge) to the fabric's, for nodes on another subnet."""
        _unwind_on_sigterm()
        self.stem = stem
        self.nodes: list[Node] = []
        self._all: list[Netns] = []
        try:  # a half-built lab is no one's to close: remove what it made
            self.fabric = self.new_ns("fab")
            # A fixed MAC: a bridge otherwise takes its lowest port's, so replacing a node's
            # uplink (tests do) would change the router's MAC under the nodes' ARP caches.
            self.fabric.ip("link", "add", "br0", "address", "02:00:00:00:00:fe", "type",
                           "bridge")
            self.fabric.ip("addr", "add", f"{UNDERLAY4[254]}/24", "dev", "br0")
            self.fabric.ip("link", "set", "br0", "up")
            self.router: Netns | None = self._add_router() if segments > 1 else None
        except BaseException:
            self.close()
            raise

    def _add_router(self) -> Netns:
        """.1 on both segments, forwarding between them; segment 1's switch is its br1."""
        rt = self.new_ns("rt")
        self.fabric.ip("link", "add", "rt", "type", "veth", "peer", "name", "eth0", "netns",
                       rt.name)
        self.fabric.ip("link", "set", "rt", "master", "br0", "up")
        rt.ip("link", "add", "br1", "address", "02:00:00:00:01:fe", "type", "bridge")
        for dev, net4, net6 in (("eth0", UNDERLAY4, UNDERLAY6), ("br1", UNDERLAY4B, UNDERLAY6B)):
            rt.ip("addr", "add", f"{net4[1]}/{net4.prefixlen}", "dev", dev)
            rt.ip("addr", "add", f"{net6[1]}/{net6.prefixlen}", "dev", dev, "nodad")
            rt.ip("link", "set", dev, "up")
        rt.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        # etcd on the fabric (IPv4 only) answers nodes behind the router
        self.fabric.ip("route", "add", str(UNDERLAY4B), "via", str(UNDERLAY4[1]))
        return rt

    def new_ns(self, role: str) -> Netns:
        ns = Netns.create(f"{self.stem}-{role}")
        self._all.append(ns)
        return ns

    def add_node(self, index: int, mtu: int = 1500, segment: int = 0) -> Node:
        ns = self.new_ns(f"n{index}")
        net4, net6 = (UNDERLAY4, UNDERLAY6) if segment == 0 else (UNDERLAY4B, UNDERLAY6B)
        node = Node(index, ns, net4[10 + index], net6[10 + index], segment)
        port = f"n{index}"
        switch, bridge = (self.fabric, "br0") if segment == 0 else (self.router, "br1")
        if switch is None:
            raise ValueError("segment 1 needs a lab with segments=2")
        switch.ip("link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "name",
                  "eth0", "mtu", str(mtu), "netns", ns.name)
        switch.ip("link", "set", port, "master", bridge, "up")
        ns.ip("addr", "add", f"{node.ip}/24", "dev", "eth0")
        ns.ip("addr", "add", f"{node.ip6}/64", "dev", "eth0", "nodad")
        ns.ip("link", "set", "eth0", "up")
        if self.router is not None:  # the other segment is reached through the router
            other4, other6 = (UNDERLAY4B, UNDERLAY6B) if segment == 0 else (UNDERLAY4, UNDERLAY6)
            ns.ip("route", "add", str(other4), "via", str(net4[1]))
            ns.ip("-6", "route", "add", str(other6), "via", str(net6[1]))
        # forwarding inside the node's own namespace: it routes for its pods
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self.nodes.append(node)
        return node

    def add_uplink(self, node: Node, name: str, ip: str, port: str | None = None) -> None:
        """A further interface from a node to the underlay switch (a second NIC, a bond...)."""
        port = port or f"u{node.index}{name[-1]}"
        self.fabric.ip("link", "add", port, "type", "veth", "peer", "name", name, "netns",
                       node.ns.name)
        self.fabric.ip("link", "set", port, "master", "br0", "up")
        node.ns.ip("addr", "add", ip, "dev", name, *(["nodad"] if ":" in ip else []))
        node.ns.ip("link", "set", name, "up")

    def add_host(self, role: str, index: int) -> tuple[Netns, ipaddress.IPv4Address]:
        """A plain machine on the underlay, outside the cluster network."""
        ns = self.new_ns(role)
        ip = UNDERLAY4[index]
        port = f"h{index}"
        self.fabric.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                       ns.name)
        self.fabric.ip("link", "set", port, "master", "br0", "up")
        ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        return ns, ip

    def add_pod(self, node: Node, subnet: ipaddress.IPv4Network | None,
                subnet6: ipaddress.IPv6Network | None = None, mtu: int | None = None) -> Pod:
        """A pod wired straight to its node by veth (the CNI plugin does this for real pods)."""
        n = len(node.pods) + 1
        ns = self.new_ns(f"p{node.index}{n}")
        host_if = f"pod{n}"
        node.ns.ip("link", "add", host_if, *(["mtu", str(mtu)] if mtu else []), "type", "veth",
                   "peer", "name", "eth0", *(["mtu", str(mtu)] if mtu else []), "netns", ns.name)
        node.ns.ip("link", "set", host_if, "up")
        ns.ip("link", "set", "eth0", "up")
        pod = Pod(ns, None, None)
        for net, plen in ((subnet, 32), (subnet6, 128)):
            if net is None:
                continue
            gw, ip = net[1], net[1 + n]
            node.ns.ip("addr", "add", f"{gw}/{plen}", "dev", host_if, *(
                ["nodad"] if net.version == 6 else []))
            ns.ip("addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0",
                  *(["nodad"] if net.version == 6 else []))
            node.ns.ip("route", "add", f"{ip}/{plen}", "dev", host_if)
            if isinstance(ip, ipaddress.IPv4Address):
                pod.ip = ip
            else:
                pod.ip6 = ip
        for net in (subnet, subnet6):
            if net is not None:
                ns.ip(*(["-6"] if net.version == 6 else []), "route", "add", "default", "via",
                      str(net[1]), "dev", "eth0")
        node.pods.append(pod)
        return pod

    def close(self) -> None:
        for ns in reversed(self._all):
            with contextlib.suppress(Exception):
                ns.delete()
        self._all.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
