"""Issue 9's acceptance: only cluster members steer a node's traffic."""

import base64
import ipaddress
import json
import re
import select
import socket
import struct
import subprocess
import time

from tests.e2e.conftest import ipam, metric, ping, start, state, talking
from tests.waiting import SOON, wait_for
from vxnet.lab.cluster import PREFIX, Cluster

FOREIGN = ('{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan",'
           '"BackendData":{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}')


def all_pairs_ping(nodes):
    bad = []
    for a in nodes:
        for b in nodes:
            if a is not b and ping(a.pods[0], b.pods[0].ip).returncode != 0:
                bad.append((a.name, b.name))
    return bad


def kv(cluster, key):
    out = json.loads(cluster.etcdctl("get", key, "-w", "json"))
    if not out.get("kvs"):
        return None
    item = out["kvs"][0]
    return base64.b64decode(item["value"]).decode(), int(item.get("lease", 0))


def fdb(node) -> str:
    return node.ns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout


def test_a_foreign_takeover_of_a_nodes_lease_is_put_back(cluster):
    nodes = start(cluster, 3, pods=True)
    a = nodes[0]
    info = ipam(cluster, a)
    key = f"{PREFIX}/subnets/{info['leaseKey']}"
    ours = kv(cluster, key)
    assert ours is not None and ours[1] != 0
    foreign_lease = cluster.etcdctl("lease", "grant", "600").split()[1]
    puts = [("put", key, FOREIGN),  # no etcd lease
            ("put", f"--lease={foreign_lease}", key, FOREIGN),  # another etcd lease
            ("put", f"--lease={ours[1]:x}", key, FOREIGN)]  # under the lease our repair used
    for n, args in enumerate(puts, 1):
        t0 = time.monotonic()
        cluster.etcdctl(*args)
        wait_for(lambda: kv(cluster, key) == ours, 5, f"our value back after put {n}")
        for peer in nodes[1:]:
            wait_for(lambda p=peer: f"{info['vtepMAC']} dst {a.ip}" in fdb(p), SOON,
                     f"{peer.name} points at {a.name} again")
        print(f"put {n}: repaired and peers re-pointed in {time.monotonic() - t0:.2f}s")
        assert "198.51.100.99" not in fdb(nodes[1]) + fdb(nodes[2])
    assert metric(cluster, a, "vxnet_lease_takeovers_total") == 3
    assert all_pairs_ping(nodes) == []
    assert "another writer changed our key" in cluster.log(a)


def test_etcd_with_authentication(cluster):
    cluster.etcd.enable_auth(PREFIX, "node", "s3cret")
    good = cluster.add_node(1, start_agent=False)
    cluster.start_agent(good, "--etcd-username", "node", "--etcd-password", "s3cret")
    cluster.wait_ready(good)
    assert ipam(cluster, good)["podSubnetThisNode"].startswith("10.244.")
    bad = cluster.add_node(2, start_agent=False)
    res = subprocess.run(["ip", "netns", "exec", bad.ns.name,
                          *cluster.agent_argv(bad, "--etcd-username", "node")],
                         env={"FLANNELD_ETCD_PASSWORD": "wrong", "PATH": "/usr/sbin:/usr/bin"},
                         capture_output=True, text=True, timeout=60)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "refused user 'node'" in lines[0] and "authentication failed" in lines[0]


BAD_PEERS = {  # subnet third octet -> (PublicIP, VNI)
    200: ("127.0.0.1", 1), 201: ("224.0.0.1", 1), 202: ("239.1.1.1", 1),
    203: ("255.255.255.255", 1), 204: ("240.0.0.1", 1), 205: ("169.254.9.9", 1),
    206: ("198.51.100.77", 2),  # a sendable address, but another VNI
    207: ("198.51.100.11", 1),  # node1's own address (node2 may send there: node1 drops it)
}


def bad_for(node) -> dict:
    """What this node must reject: all of them, but node1's address only on node1."""
    return {o: v for o, v in BAD_PEERS.items() if o != 207 or v[0] == str(node.ip)}


def test_impossible_peers_never_reach_a_kernel_while_pods_ping(cluster):
    nodes = start(cluster, 2, pods=True)
    p1, p2 = nodes[0].pods[0], nodes[1].pods[0]
    talking(p1, p2)
    pinger = subprocess.Popen(["ip", "netns", "exec", p1.ns.name, "ping", "-i", "0.01", "-c",
                               "300", "-W", "1", str(p2.ip)], stdout=subprocess.PIPE, text=True)
    try:
        for octet, (ip, vni) in BAD_PEERS.items():
            mac = f"0e:00:00:00:00:{octet:x}"
            value = json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                                "BackendData": {"VNI": vni, "VtepMAC": mac}})
            cluster.etcdctl("put", f"{PREFIX}/subnets/10.244.{octet}.0-24", value)
        for n in nodes:
            wait_for(lambda n=n: len(state(cluster, n)["overlays"]["ipv4"]["rejected"]) ==
                     len(bad_for(n)), 5, f"{n.name} rejects every bad lease")
        out = pinger.communicate(timeout=60)[0]
    finally:
        pinger.kill()
    sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent == got == 300, out
    for n in nodes:
        rejected = state(cluster, n)["overlays"]["ipv4"]["rejected"]
        assert "is loopback" in rejected["10.244.200.0-24"]
        assert "VNI 2 is not ours" in rejected["10.244.206.0-24"]
        assert "is broadcast" in rejected["10.244.203.0-24"]
        kernel = (fdb(n) + n.ns.ip("route").stdout + n.ns.ip("neigh").stdout +
                  n.ns.run("nft", "list", "table", "inet", "vxnet-vxlan").stdout)
        for octet, (ip, _) in bad_for(n).items():
            assert f"10.244.{octet}." not in kernel and f"0e:00:00:00:00:{octet:x}" not in kernel
            if ip != str(n.ip):
                assert ip not in kernel
        assert metric(cluster, n, 'vxnet_peers_rejected{family="ipv4"}') == len(bad_for(n))
    assert "one of this node's own" in state(cluster, nodes[0])["overlays"]["ipv4"]["rejected"][
        "10.244.207.0-24"]


def vxlan_frame(vni: int, dst_mac: str, src_ip, dst_ip, payload: bytes) -> bytes:
    """A VXLAN packet carrying Ethernet/IPv4/UDP to dst_ip:5555, as an attacker would craft it."""
    udp = struct.pack("!HHHH", 40000, 5555, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      ipaddress.ip_address(src_ip).packed, ipaddress.ip_address(dst_ip).packed)
    total = sum(struct.unpack("!10H", hdr))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~total & 0xFFFF) + hdr[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("0e0000000001") + b"\x08\x00"
    return struct.pack("!B3xI", 0x08, vni << 8) + eth + hdr + udp


class PodListener:
    """UDP port 5555 inside a pod; counts what arrives."""

    def __init__(self, pod):
        with pod.ns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 5555))
        self.sock.setblocking(False)

    def drain(self, settle: float = 0.5) -> int:
        n, deadline = 0, time.monotonic() + settle
        while select.select([self.sock], [], [], max(0, deadline - time.monotonic()))[0]:
            self.sock.recv(2048)
            n += 1
        return n


def send_from(ns, dst_ip, frames, count=20):
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(count):
            s.sendto(frames, (str(dst_ip), 8472))
    finally:
        s.close()


def test_vxlan_only_from_cluster_members(cluster):
    n1, n2, n3 = start(cluster, 3)
    pod = cluster.add_cni_pod(n1)
    target = ipam(cluster, n1)
    spoofed = ipam(cluster, n2)["podSubnetThisNode"].replace(".0/24", ".7")
    frame = vxlan_frame(1, target["vtepMAC"], spoofed, pod.ip, b"hello")
    stranger, stranger_ip = cluster.lab.add_host("x", 200)
    listener = PodListener(pod)

    send_from(stranger, n1.ip, frame)
    assert listener.drain() == 0
    wait_for(lambda: metric(cluster, n1, "vxnet_vxlan_dropped_packets_total") >= 20, 10,
             "drops counted")
    wait_for(lambda: str(stranger_ip) in state(cluster, n1)["vxlanAllowList"]["refusedSources"],
             40, "the stranger named")

    send_from(n2.ns, n1.ip, frame)  # the same frame from a real peer is delivered
    assert listener.drain() == 20

    gone = ipam(cluster, n3)
    cluster.stop_agent(n3)
    cluster.etcdctl("del", f"{PREFIX}/subnets/{gone['leaseKey']}")
    wait_for(lambda: str(n3.ip) not in allowed(n1), SOON, "a removed peer leaves the allow-list")
    send_from(n3.ns, n1.ip, frame)
    assert listener.drain() == 0

    for tamper in (("flush", "set", "inet", "vxnet-vxlan", "peers4"),
                   ("delete", "table", "inet", "vxnet-vxlan")):
        n1.ns.run("nft", *tamper)
        t0 = time.monotonic()
        wait_for(lambda: str(n2.ip) in allowed(n1), SOON, f"repaired after {tamper[:2]}")
        print(f"{' '.join(tamper[:2])}: repaired in {time.monotonic() - t0:.3f}s")
        send_from(n2.ns, n1.ip, frame)
        assert listener.drain() == 20
    assert metric(cluster, n1, "vxnet_vxlan_allowlist_repairs_total") == 2


def allowed(node) -> str:
    return node.ns.run("nft", "list", "set", "inet", "vxnet-vxlan", "peers4", check=False).stdout


def test_dual_stack_full_size_packets_pass_both_overlays(tmp_path):
    config = {"Network": "10.244.0.0/16", "EnableIPv6": True,
              "IPv6Network": "fd00:10:244::/48", "Backend": {"Type": "vxlan"}}
    with Cluster("dual", config=config, workdir=tmp_path / "lab") as c:
        c.start()
        n1, n2 = start(c, 2, pods=True)
        env = c.subnet_env(n1).read_text()
        assert "FLANNEL_MTU=1430" in env, env  # the IPv6 overlay's (1500 - 70), not 1450
        a, b = n1.pods[0], n2.pods[0]
        assert a.ip6 is not None and b.ip6 is not None
        for dst, size in ((b.ip, 1430 - 28), (b.ip6, 1430 - 48)):
            r = ping(a, dst, "-M", "do", "-s", str(size), "-c", "3")
            assert r.returncode == 0, (dst, r.stdout, r.stderr)
        # the IPv6 underlay is allow-listed too
        listing = n1.ns.run("nft", "list", "set", "inet", "vxnet-vxlan", "peers6").stdout
        assert str(n2.ip6) in listing
