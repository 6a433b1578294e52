"""Issue 11's acceptance: the agent follows the node -- its underlay address (IPv4 and IPv6), its
interface, its MTU -- and puts its device back when someone changes it, all without a restart."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.e2e.conftest import ipam, metric, ping, start, state
from tests.waiting import SOON, wait_for
from vxnet.kernel.ethtool import tx_checksum
from vxnet.lab.cluster import PREFIX, Cluster

pytestmark = pytest.mark.netns


def lease_value(cluster, node) -> dict:
    key = f"{PREFIX}/subnets/{ipam(cluster, node)['leaseKey']}"
    kvs = json.loads(cluster.etcdctl("get", key, "-w", "json"))["kvs"]
    return json.loads(base64.b64decode(kvs[0]["value"]))


def fdb(node, dev="flannel.1") -> str:
    return node.ns.run("bridge", "fdb", "show", "dev", dev).stdout


def local_of(node, dev="flannel.1") -> str:
    info = json.loads(node.ns.ip("-d", "-j", "link", "show", dev).stdout)[0]
    data = info["linkinfo"]["info_data"]
    return data.get("local") or data.get("local6", "")


def moved(cluster, nodes, mover, old: str, new: str, plen: int, dev: str, family: str):
    """Move `mover`'s underlay address from old to new while the others' pods keep trying to
    reach its pod; the seconds until every one of them gets through again."""
    pid = cluster.agents[mover.index].pid
    v6 = ["nodad"] if family == "-6" else []
    mover.ns.ip(family, "addr", "del", f"{old}/{plen}", "dev", "eth0")  # as DHCP does: the
    # old one goes, and for a moment there is none: the agent keeps its state, not ready
    wait_for(lambda: cluster.api(mover, "/readyz")[0] == 503, 5, "not ready meanwhile")
    mover.ns.ip(family, "addr", "add", f"{new}/{plen}", "dev", "eth0", *v6)
    t0 = time.monotonic()
    target = mover.pods[0].ip if family == "-4" else mover.pods[0].ip6
    for n in nodes:
        if n is not mover:
            wait_for(lambda n=n: ping(n.pods[0], target, "-W", "1").returncode == 0, 30,
                     f"{n.name} reaches {mover.name}'s pod again")
    back = time.monotonic() - t0
    assert cluster.agents[mover.index].pid == pid and cluster.agents[mover.index].poll() is None
    for n in nodes:
        if n is not mover:
            assert f"dst {new}" in fdb(n, dev) and f"dst {old} " not in fdb(n, dev)
    assert local_of(mover, dev) == new
    return back


def test_a_moved_ipv4_address_is_followed_without_a_restart(cluster):
    nodes = start(cluster, 3, pods=True)
    n2 = nodes[1]
    back = moved(cluster, nodes, n2, "198.51.100.12", "198.51.100.22", 24, "flannel.1", "-4")
    print(f"\nIPv4 underlay address moved: pods reach the node again after {back:.2f} s")
    assert lease_value(cluster, n2)["PublicIP"] == "198.51.100.22"
    assert ipam(cluster, n2)["nodeIP"] == "198.51.100.22"
    assert metric(cluster, n2, "vxnet_underlay_changes_total") == 1
    assert back < 5
    for a in nodes:  # and everyone still reaches everyone
        for b in nodes:
            if a is not b:
                assert ping(a.pods[0], b.pods[0].ip).returncode == 0, (a.name, b.name)


def test_a_moved_ipv6_address_is_followed_without_a_restart(tmp_path):
    config = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:10:244::/48",
              "Backend": {"Type": "vxlan"}}
    with Cluster("mv6", config=config, workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5")) as c:
        c.start()
        nodes = start(c, 3, pods=True)
        n2 = nodes[1]
        back = moved(c, nodes, n2, "2001:db8:100::c", "2001:db8:100::22", 64, "flannel-v6.1",
                     "-6")
        print(f"\nIPv6 underlay address moved: pods reach the node again after {back:.2f} s")
        assert lease_value(c, n2)["PublicIPv6"] == "2001:db8:100::22"
        assert back < 5


def test_the_interface_is_chosen_by_regex_and_followed_when_replaced(cluster):
    node = cluster.add_node(1, start_agent=False)
    cluster.lab.add_uplink(node, "ext1", "198.51.100.101/24")
    cluster.start_agent(node, "--iface-regex", "^ext")
    cluster.wait_ready(node)
    assert ipam(cluster, node)["nodeIP"] == "198.51.100.101"
    pid = cluster.agents[1].pid
    node.ns.ip("link", "del", "ext1")
    wait_for(lambda: cluster.api(node, "/readyz")[0] == 503, 5, "not ready without it")
    assert "no interface matches ^ext" in cluster.api(node, "/readyz")[1]
    cluster.lab.add_uplink(node, "ext1", "198.51.100.102/24", port="u1z")
    wait_for(lambda: ipam(cluster, node)["nodeIP"] == "198.51.100.102", 10, "the new one used")
    cluster.wait_ready(node)
    assert lease_value(cluster, node)["PublicIP"] == "198.51.100.102"
    assert local_of(node) == "198.51.100.102" and cluster.agents[1].pid == pid


def test_a_lower_underlay_mtu_is_followed(cluster):
    node = cluster.add_node(1, start_agent=False)
    conflist = cluster.workdir / "node1" / "10-vxnet.conflist"
    cluster.start_agent(node, "--cni-conf-file", str(conflist))
    cluster.wait_ready(node)
    assert "FLANNEL_MTU=1450" in cluster.subnet_env(node).read_text()
    assert json.loads(conflist.read_text())["plugins"][0]["mtu"] == 1450
    node.ns.ip("link", "set", "eth0", "mtu", "1400")
    wait_for(lambda: "FLANNEL_MTU=1350" in cluster.subnet_env(node).read_text(), 5,
             "subnet.env follows")
    wait_for(lambda: json.loads(conflist.read_text())["plugins"][0]["mtu"] == 1350, 5,
             "the CNI conflist follows")
    assert json.loads(node.ns.ip("-j", "link", "show", "flannel.1").stdout)[0]["mtu"] == 1350


@pytest.mark.parametrize("change", [
    ("mtu", "1300"), ("address", "0e:12:34:56:78:9a"), ("type", "vxlan", "learning"), ("down",),
], ids=["mtu", "mac", "learning", "down"])
def test_device_attributes_changed_by_hand_are_put_back(cluster, change):
    n1, n2 = start(cluster, 2, pods=True)
    before = json.loads(n1.ns.ip("-d", "-j", "link", "show", "flannel.1").stdout)[0]
    n1.ns.ip("link", "set", "flannel.1", *change)
    t0 = time.monotonic()

    def back():
        now = json.loads(n1.ns.ip("-d", "-j", "link", "show", "flannel.1").stdout)[0]
        return (now["mtu"], now["address"], now["linkinfo"]["info_data"].get("learning"),
                "UP" in now["flags"]) == (before["mtu"], before["address"],
                                          before["linkinfo"]["info_data"].get("learning"), True)

    wait_for(back, SOON, f"flannel.1 back after {change}")
    print(f"\n{change[0]}: put back in {time.monotonic() - t0:.3f} s")
    wait_for(lambda: ping(n1.pods[0], n2.pods[0].ip).returncode == 0, 5, "pods talk")
    assert metric(cluster, n1, "vxnet_device_drift_repairs_total") >= 1


def test_checksum_offload_off_survives_recreation_and_restart(cluster):
    node = cluster.add_node(1, start_agent=False)
    cluster.start_agent(node, "--no-tx-checksum-offload")
    cluster.wait_ready(node)
    assert tx_checksum("flannel.1", node.ns.name) is False
    assert state(cluster, node)["overlays"]["ipv4"]["txChecksumOffload"] is False
    node.ns.ip("link", "del", "flannel.1")
    wait_for(lambda: node.ns.ip("link", "show", "flannel.1", check=False).returncode == 0, SOON,
             "recreated")
    wait_for(lambda: tx_checksum("flannel.1", node.ns.name) is False, SOON,
             "off after recreation")
    cluster.stop_agent(node)
    # a restart with the setting in the network config instead of the flag
    cluster.etcdctl("put", f"{PREFIX}/config", json.dumps(
        {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "TxChecksumOffload": False}}))
    _set_on(node)
    cluster.start_agent(node)
    cluster.wait_ready(node)
    assert tx_checksum("flannel.1", node.ns.name) is False
    out = node.ns.run(*cluster.vxnet, "status").stdout
    assert "tx checksum offload off" in out


def _set_on(node):
    from vxnet.kernel.ethtool import set_tx_checksum

    set_tx_checksum("flannel.1", True, node.ns.name)  # as a reboot would leave it
