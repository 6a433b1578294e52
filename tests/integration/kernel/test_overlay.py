"""Two node namespaces programmed by vxnet.kernel: traffic, idempotence, ownership, bad peers."""

import ipaddress as ipa
import json
import logging
import subprocess

import pytest

from tests.integration.kernel.conftest import open_node, peer_of, subnet
from tests.waiting import SOON, until
from vxnet.kernel.routes import PROTO_VXNET

pytestmark = pytest.mark.netns

TCP_SERVER = ("import socket;s=socket.socket(socket.AF_INET{fam});s.setsockopt(1,2,1);"
              "s.bind(('{ip}',5201));s.listen();c,_=s.accept();print(c.recv(64).decode())")
TCP_CLIENT = ("import socket,time\nfor _ in range(50):\n try:\n  c=socket.create_connection("
              "('{ip}',5201),timeout=2);break\n except OSError: time.sleep(0.1)\n"
              "c.sendall(b'hello over vxnet')")


def ping(pod, dst, count=3):
    return pod.ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", str(dst), check=False)


def tcp(client, server, dst):
    fam = "6" if dst.version == 6 else ""
    srv = subprocess.Popen(["ip", "netns", "exec", server.ns.name, "python3", "-c",
                            TCP_SERVER.format(ip=dst, fam=fam)],
                           stdout=subprocess.PIPE, text=True)
    try:
        client.ns.run("python3", "-c", TCP_CLIENT.format(ip=dst))
        return srv.communicate(timeout=10)[0].strip()
    finally:
        srv.kill()


async def program_pair(lab, versions=(4,), **kw):
    n1, n2 = lab.add_node(1), lab.add_node(2)
    k1, k2 = await open_node(n1, versions, **kw), await open_node(n2, versions, **kw)
    for v in versions:
        k1.plane(v).set_peers([peer_of(n2, v)])
        k2.plane(v).set_peers([peer_of(n1, v)])
        assert k1.plane(v).resync().failures == [] and k2.plane(v).resync().failures == []
    pods = [lab.add_pod(n, subnet(n, 4) if 4 in versions else None,
                        subnet(n, 6) if 6 in versions else None) for n in (n1, n2)]
    return (k1, k2), pods


@pytest.mark.parametrize("use_nexthops", [True, False], ids=["nexthop", "gateway-route"])
async def test_pods_talk_across_nodes_ipv4_and_ipv6(lab, use_nexthops):
    (k1, _), (p1, p2) = await program_pair(lab, (4, 6), use_nexthops=use_nexthops)
    assert k1.plane(4).spec.use_nexthops is use_nexthops
    for a, b in ((p1, p2), (p2, p1)):
        assert ping(a, b.ip).returncode == 0, ping(a, b.ip).stdout
        assert ping(a, b.ip6).returncode == 0, ping(a, b.ip6).stdout
    assert tcp(p1, p2, p2.ip) == "hello over vxnet"
    assert tcp(p2, p1, p1.ip6) == "hello over vxnet"


def tx_packets(node, dev):
    return json.loads(node.ns.ip("-s", "-j", "link", "show", dev).stdout)[0]["stats64"]["tx"][
        "packets"]


async def test_direct_routing_skips_encapsulation_on_a_shared_segment(lab):
    (k1, k2), (p1, p2) = await program_pair(lab, (4,), direct_routing=True)
    n1 = k1.node
    route = n1.ns.ip("route", "show", str(subnet(k2.node))).stdout
    assert f"via {k2.node.ip} dev eth0" in route
    before = tx_packets(n1, "flannel.1")
    assert ping(p1, p2.ip, count=5).returncode == 0
    assert tx_packets(n1, "flannel.1") == before  # nothing went through the VXLAN device
    assert not dict(k1.plane().fdb.desired_items()) and not dict(k1.plane().neigh.desired_items())


async def test_same_state_twice_and_a_restart_make_no_writes(lab):
    (k1, _), _ = await program_pair(lab, (4, 6))
    for v in (4, 6):
        assert k1.plane(v).resync().total == 0
    # a new process: fresh caches, same kernel
    again = await open_node(k1.node, (4, 6))
    assert again.overlays[4].ensured.action == "reused"
    for v in (4, 6):
        again.plane(v).set_peers(k1.plane(v).peers.values())
        result = again.plane(v).resync()
        assert (result.total, result.failures) == (0, []), result


async def test_stale_entries_go_and_foreign_ones_stay(lab):
    n1, n2, n3 = lab.add_node(1), lab.add_node(2), lab.add_node(3)
    k1 = await open_node(n1)
    k1.plane().set_peers([peer_of(n2), peer_of(n3)])
    k1.plane().resync()
    ns = n1.ns
    # not ours: another device, another protocol, a dynamic neighbour, a foreign nexthop
    ns.ip("route", "add", "10.99.0.0/24", "via", "198.51.100.254", "dev", "eth0")
    ns.ip("route", "add", "10.244.200.0/24", "dev", "flannel.1", "proto", "static")
    ns.ip("nexthop", "add", "id", "7", "via", "198.51.100.254", "dev", "eth0")
    ns.ip("neigh", "add", "198.51.100.99", "lladdr", "0e:00:00:00:00:99", "dev", "eth0")
    # a new run whose desired state no longer has node 3
    k1b = await open_node(n1)
    k1b.plane().set_peers([peer_of(n2)])
    result = k1b.plane().resync()
    assert dict(result.writes) == {"route": 1, "nexthop": 1, "neigh": 1, "fdb": 1}
    routes = ns.ip("route").stdout
    assert str(subnet(n3)) not in routes and str(subnet(n2)) in routes
    assert "10.99.0.0/24" in routes and "10.244.200.0/24" in routes
    assert "id 7 " in ns.ip("nexthop").stdout
    assert "198.51.100.99" in ns.ip("neigh", "show", "dev", "eth0").stdout
    # flannel-made entries on our device (proto boot) are adopted and rewritten as ours
    ns.ip("route", "add", "10.244.150.0/24", "via", "10.244.150.0", "dev", "flannel.1", "onlink")
    assert k1b.plane().resync().writes["route"] == 1
    assert "10.244.150.0/24" not in ns.ip("route").stdout


async def test_bad_peers_are_skipped_and_the_rest_programmed(lab, caplog):
    n1, n2, n3 = lab.add_node(1), lab.add_node(2), lab.add_node(3)
    k1 = await open_node(n1)
    good = [peer_of(n2), peer_of(n3)]
    bad = [
        peer_of(n2, key="badmac", net=ipa.ip_network("10.244.50.0/24"),
                mac="01:00:5e:00:00:01"),
        peer_of(n2, key="family", net=ipa.ip_network("fd00:10:244:9::/64")),
        peer_of(n2, key="ours", net=ipa.ip_network("10.244.1.0/25")),
        peer_of(n2, key="outside", net=ipa.ip_network("10.9.0.0/24")),
        peer_of(n2, key="underlay6", net=ipa.ip_network("10.244.60.0/24"),
                public_ip=ipa.ip_address("2001:db8:100::9")),
        peer_of(n3, key="dup", net=ipa.ip_network("10.244.3.0/25")),
    ]
    with caplog.at_level(logging.WARNING):
        k1.plane().set_peers(bad[:3] + good + bad[3:])
        assert k1.plane().resync().failures == []
    assert set(k1.plane().peers) == {"node2-v4", "node3-v4"}
    assert set(k1.plane().rejected) == {p.key for p in bad}
    for line in ["peer badmac: VTEP multicast MAC address",
                 "peer family: subnet fd00:10:244:9::/64 is not IPv4",
                 "peer ours: subnet 10.244.1.0/25 overlaps our own",
                 "peer outside: subnet 10.9.0.0/24 is outside the network",
                 "peer underlay6: public IP 2001:db8:100::9 is not IPv4",
                 "peer dup: subnet 10.244.3.0/25 overlaps peer node3-v4"]:
        assert line in caplog.text
    routes = n1.ns.ip("route", "show", "proto", str(PROTO_VXNET)).stdout
    assert "10.244.2.0/24" in routes and "10.244.3.0/24" in routes and routes.count("\n") == 2


@pytest.mark.parametrize("what", [
    ("route", "del", "10.244.2.0/24"),
    ("neigh", "del", "10.244.2.0", "dev", "flannel.1"),
    ("bridge", "fdb", "del", "MAC", "dev", "flannel.1", "dst", "198.51.100.12", "self"),
    ("nexthop", "del", "id", "NHID"),
    ("neigh", "replace", "10.244.2.0", "lladdr", "0e:99:99:99:99:99", "dev", "flannel.1",
     "nud", "permanent"),
], ids=["route", "neigh", "fdb", "nexthop", "neigh-overwritten"])
async def test_entries_deleted_by_hand_are_put_back(two_nodes, what):
    n1, n2 = two_nodes
    k1 = await open_node(n1)
    k1.plane().set_peers([peer_of(n2)])
    k1.plane().resync()
    state = lambda: (n1.ns.ip("route").stdout, n1.ns.ip("neigh", "show", "dev", "flannel.1"  # noqa: E731
                     ).stdout, n1.ns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout,
                     n1.ns.ip("nexthop").stdout)
    good = state()
    _, task = k1.keep(resync_interval=3600)  # subscribed when it returns: nothing goes unseen
    try:
        nhid, _ = next(k1.plane().nexthop.desired_items())
        args = [a.replace("MAC", peer_of(n2).vtep_mac).replace("NHID", str(nhid)) for a in what]
        (n1.ns.run if args[0] == "bridge" else n1.ns.ip)(*args)
        await until(lambda: state() == good, SOON, f"the kernel as before after {what}")
    finally:
        task.cancel()


async def test_deleted_device_is_put_back_with_same_mac(two_nodes):
    n1, n2 = two_nodes
    k1 = await open_node(n1)
    k1.plane().set_peers([peer_of(n2)])
    k1.plane().resync()
    before = (n1.ns.ip("route", "show", "proto", str(PROTO_VXNET)).stdout,
              n1.ns.ip("-j", "link", "show", "flannel.1").stdout)
    mac = json.loads(before[1])[0]["address"]
    _, task = k1.keep(resync_interval=3600)  # subscribed when it returns: nothing goes unseen
    try:
        n1.ns.ip("link", "del", "flannel.1")

        def back():
            out = n1.ns.ip("-j", "link", "show", "flannel.1", check=False).stdout
            return out and json.loads(out)[0]["address"] == mac and n1.ns.ip(
                "route", "show", "proto", str(PROTO_VXNET)).stdout == before[0] and \
                "PERMANENT" in n1.ns.ip("neigh", "show", "dev", "flannel.1").stdout
        await until(back, SOON, "flannel.1 back with its MAC, routes, neighbours")
        assert k1.overlays[4].repairs == 1
        # and set down by hand: put back up at once, and what the kernel dropped with it
        # (IPv4 routes, nexthops, neighbours) fully resynced
        n1.ns.ip("link", "set", "flannel.1", "down")
        await until(lambda: "UP" in json.loads(n1.ns.ip(
            "-j", "link", "show", "flannel.1").stdout)[0]["flags"] and n1.ns.ip(
            "route", "show", "proto", str(PROTO_VXNET)).stdout == before[0], SOON,
            "flannel.1 up again, its routes resynced")
        assert k1.overlays[4].drift_repairs >= 1 and not k1.plane().parked
    finally:
        task.cancel()
