"""Issue 12's on-demand neighbours: the kernel asks (app_solicit, l2miss) and the agent answers,
so a node holds entries only for the pods it talks to; mixed with up-front nodes."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import ipam, ping, state
from tests.waiting import wait_for
from vxnet.lab.cluster import PREFIX, Cluster

pytestmark = pytest.mark.netns


def config(fdb: str = "up-front") -> dict:
    return {"Network": "10.244.0.0/16",
            "Backend": {"Type": "vxlan", "Neighbours": "on-demand", "FDB": fdb}}


def neighbours(node) -> dict[str, str]:
    """Remote pods' entries on the VXLAN device: address -> MAC."""
    out = json.loads(node.ns.ip("-j", "neigh", "show", "dev", "flannel.1").stdout)
    return {e["dst"]: e["lladdr"] for e in out if "lladdr" in e}


def fdb(node) -> dict[str, str]:
    out = json.loads(node.ns.run("bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout)
    return {e["mac"]: e["dst"] for e in out if e.get("dst") and e["mac"] != "00:00:00:00:00:00"}


def start(c: Cluster, n: int, *extra: str) -> list:
    nodes = [c.add_node(i, start_agent=False) for i in range(1, n + 1)]
    for node in nodes:
        c.start_agent(node, *extra)
    for node in nodes:
        c.wait_ready(node)
        c.add_cni_pod(node)
    return nodes


@pytest.mark.parametrize("fdb_mode", ["up-front", "on-demand"])
def test_on_demand_nodes_hold_only_what_they_talk_to(tmp_path, fdb_mode):
    # --ip-masq: the agent masquerades, so the bridge plugin does not hide pods behind their
    # node's address and the entries are the pods' own
    with Cluster("od", config=config(fdb_mode), workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5", "--ip-masq")) as c:
        c.start()
        n1, n2, n3 = start(c, 3)
        p1, p2 = n1.pods[0], n2.pods[0]
        mac = {n.name: ipam(c, n)["vtepMAC"] for n in (n1, n2, n3)}
        assert ping(p1, p2.ip).returncode == 0  # the very first packet gets through
        assert neighbours(n1) == {str(p2.ip): mac['node2']}
        assert neighbours(n2) == {str(p1.ip): mac['node1']}
        assert neighbours(n3) == {}
        if fdb_mode == "on-demand":
            assert fdb(n1) == {mac['node2']: str(n2.ip)} and fdb(n3) == {}
        else:
            assert fdb(n3) == {mac['node1']: str(n1.ip), mac['node2']: str(n2.ip)}
        routes = n1.ns.ip("route", "show", "proto", "118").stdout
        assert routes.split() == ["10.244.0.0/16", "dev", "flannel.1", "scope", "link"]
        for a in (n1, n2, n3):
            for b in (n1, n2, n3):
                if a is not b:
                    assert ping(a.pods[0], b.pods[0].ip).returncode == 0, (a.name, b.name)
        misses = state(c, n1)["overlays"]["ipv4"]["onDemand"]["misses"]
        assert misses["l3 answered"] >= 2 and "l3 limited" not in misses

        # a restart keeps what the kernel has, and writes nothing
        c.stop_agent(n1)
        held = neighbours(n1), fdb(n1)
        c.start_agent(n1)
        c.wait_ready(n1)
        assert state(c, n1)["firstSyncWrites"] == 0
        assert (neighbours(n1), fdb(n1)) == held

        # a peer's lease goes: its FDB entry and every neighbour through its MAC go with it
        lease = ipam(c, n2)["leaseKey"]
        c.stop_agent(n2)
        c.etcdctl("del", f"{PREFIX}/subnets/{lease}")
        for node in (n1, n3):
            wait_for(lambda node=node: mac['node2'] not in neighbours(node).values()
                     and mac['node2'] not in fdb(node), 5, f"{node.name} forgets {n2.name}")
        assert ping(p1, n3.pods[0].ip).returncode == 0


def test_a_mixed_dual_stack_cluster_works_both_ways(tmp_path):
    """One node on demand (both kinds), one up front: each reaches the other's pods, over
    both overlays (NDP is asked for as ARP is)."""
    cfg = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/48",
           "Backend": {"Type": "vxlan"}}
    with Cluster("mix", config=cfg, workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5", "--ip-masq")) as c:
        c.start()
        n1, n2 = c.add_node(1, start_agent=False), c.add_node(2, start_agent=False)
        c.start_agent(n1, "--neighbours", "on-demand", "--fdb", "on-demand")
        c.start_agent(n2)
        for n in (n1, n2):
            c.wait_ready(n)
            c.add_cni_pod(n)
        assert ping(n2.pods[0], n1.pods[0].ip).returncode == 0
        assert ping(n1.pods[0], n2.pods[0].ip).returncode == 0
        assert list(neighbours(n1)) == [str(n2.pods[0].ip)]
        # a new pod's IPv6 address is usable once its duplicate address detection is over
        for a, b in ((n1, n2), (n2, n1)):
            wait_for(lambda a=a, b=b: ping(a.pods[0], b.pods[0].ip6).returncode == 0, 10,
                     f"IPv6 {a.name} -> {b.name}")
        held = json.loads(n1.ns.ip("-j", "-6", "neigh", "show", "dev", "flannel-v6.1").stdout)
        assert [e["dst"] for e in held if "lladdr" in e] == [str(n2.pods[0].ip6)]
        for version in ("ipv4", "ipv6"):
            assert "onDemand" in state(c, n1)["overlays"][version]
            assert "onDemand" not in state(c, n2)["overlays"][version]
