"""Issue 4's acceptance, on a lab cluster of real agents."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

from tests.e2e.conftest import ipam, metric, ping, readyz, routes, start, state, talking
from tests.waiting import SOON, wait_for
from vxnet.lab.cluster import PREFIX, Cluster

FLANNEL_VALUE = ('{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendData":{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}')


def replies(pinger, n: int, what: str) -> None:
    """Read a running ping's output until `n` more echo replies came back (its summary is left
    for communicate())."""
    got = 0

    def one_more() -> bool:
        nonlocal got
        got += "bytes from" in pinger.stdout.readline()
        return got >= n
    wait_for(one_more, SOON, what)


def test_three_nodes_every_pod_reaches_every_other(cluster):
    nodes = start(cluster, 3)
    pods = {n.index: cluster.add_pod(n) for n in nodes}
    for a in nodes:
        for b in nodes:
            if a is not b:
                r = ping(pods[a.index], pods[b.index].ip, "-c", "2")
                assert r.returncode == 0, (a.name, b.name, r.stdout)
    infos = [ipam(cluster, n) for n in nodes]
    assert sorted(i["nodeId"] for i in infos) == [1, 2, 3]
    assert len({i["podSubnetThisNode"] for i in infos}) == 3
    for n, info in zip(nodes, infos, strict=True):
        assert info["nodeName"] == n.name and info["nodeIP"] == str(n.ip)
        env = cluster.subnet_env(n).read_text()
        assert f"FLANNEL_SUBNET={info['podSubnetThisNode'].replace('.0/24', '.1/24')}" in env
        assert cluster.api(n, "/readyz")[0] == 200
        assert metric(cluster, n, "vxnet_peers_programmed") == 2


def test_sigkill_restart_under_traffic_loses_nothing(cluster):
    n1, n2 = start(cluster, 2)
    p1, p2 = cluster.add_pod(n1), cluster.add_pod(n2)
    before = ipam(cluster, n1)
    talking(p1, p2)
    pinger = subprocess.Popen(["ip", "netns", "exec", p1.ns.name, "ping", "-i", "0.01", "-c",
                               "600", "-W", "1", str(p2.ip)], stdout=subprocess.PIPE, text=True)
    try:
        replies(pinger, 1, "pods talking before the kill")
        cluster.stop_agent(n1, signal.SIGKILL)  # returns once the agent is gone
        replies(pinger, 50, "pods talking with no agent on node1")
        cluster.start_agent(n1)
        cluster.wait_ready(n1)
        out = pinger.communicate(timeout=60)[0]
    finally:
        pinger.kill()
    sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent == 600 and got == 600, out
    after = ipam(cluster, n1)
    assert (after["podSubnetThisNode"], after["vtepMAC"]) == (before["podSubnetThisNode"],
                                                              before["vtepMAC"])
    assert state(cluster, n1)["firstSyncWrites"] == 0


# A network with room for pages of fake peers, whose keys ("10.100.x" - "10.108.x") sort before
# every agent's ("10.200" and up): a listing reaches the agents' leases on its last page only.
PAGES_CONFIG = {"Network": "10.0.0.0/8", "SubnetMin": "10.200.0.0", "Backend": {"Type": "vxlan"}}
FAKE_PEERS = """
import asyncio, sys
from vxnet.store import txn
from vxnet.store.etcd import Etcd
async def main(endpoint, prefix, n):
    etcd = Etcd(endpoint, timeout=30)
    for i in range(1, n + 1, 100):  # a transaction of 100 puts: one commit, not 100
        await etcd.txn([], [txn.put(
            f"{prefix}/subnets/10.{100 + (j >> 8)}.{j & 255}.0-24".encode(),
            ('{"PublicIP":"198.51.100.%d","BackendType":"vxlan","BackendData":'
             '{"VNI":1,"VtepMAC":"0e:00:00:00:%02x:%02x"}}' % (100 + j % 150, j >> 8, j & 255)
             ).encode()) for j in range(i, min(n, i + 99) + 1)])
    await etcd.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_a_restart_over_a_listing_of_pages_loses_and_writes_nothing(tmp_path):
    """Start-up programs each page of the listing as it comes: what the kernel and the
    allow-list hold for peers on later pages stays meanwhile (node2 is on the last)."""
    with Cluster("pages", config=PAGES_CONFIG, workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5", "--health-interval", "0")) as c:
        c.start()
        c.lab.fabric.run(sys.executable, "-c", FAKE_PEERS, c.endpoint, PREFIX, "2100",
                         timeout=120)
        n1, n2 = start(c, 2)
        p1, p2 = c.add_pod(n1), c.add_pod(n2)
        talking(p1, p2)
        pinger = subprocess.Popen(["ip", "netns", "exec", p1.ns.name, "ping", "-i", "0.01",
                                   "-c", "600", "-W", "1", str(p2.ip)], stdout=subprocess.PIPE,
                                  text=True)
        try:
            replies(pinger, 1, "pods talking before the kill")
            c.stop_agent(n1, signal.SIGKILL)
            c.start_agent(n1)
            c.wait_ready(n1)
            out = pinger.communicate(timeout=60)[0]
        finally:
            pinger.kill()
        sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received",
                                       out).groups())
        assert sent == 600 and got == 600, out
        # the first start listed everything to pick a subnet, and programmed it a page at a
        # time too; the restart read its own lease, then listed page by page
        log = c.log(n1)
        assert re.search(r"first sync: 210[01] peers \(3 pages of the listing\), 840[04] kernel "
                         "writes", log), log
        assert "first sync: 2101 peers (3 pages of the listing), 0 kernel writes" in log
        assert state(c, n1)["firstSyncWrites"] == 0


def test_a_node_leaves_and_another_joins(cluster):
    n1, n2, n3 = start(cluster, 3)
    gone = ipam(cluster, n3)
    assert cluster.stop_agent(n3) == 0  # SIGTERM: a clean stop, within the lab's 10 s
    assert "stopping; kernel state and lease are left in place" in cluster.log(n3)
    cluster.etcdctl("del", f"{PREFIX}/subnets/{gone['leaseKey']}")
    # deletes go route first, FDB last: wait for all of them (how fast is the benchmarks' job)
    for n in (n1, n2):
        wait_for(lambda n=n: gone["podSubnetThisNode"] not in routes(n)
                 and gone["vtepMAC"] not in n.ns.run("bridge", "fdb", "show", "dev",
                                                     "flannel.1").stdout
                 and gone["vtepMAC"] not in n.ns.ip("neigh", "show", "dev", "flannel.1").stdout,
                 5.0, "route, neighbour and FDB entry removed")
    n4 = cluster.add_node(4)
    cluster.wait_ready(n4)
    new = ipam(cluster, n4)
    for n in (n1, n2):
        wait_for(lambda n=n: new["podSubnetThisNode"] in routes(n), SOON, "route added")
    p1, p4 = cluster.add_pod(n1), cluster.add_pod(n4)
    assert ping(p1, p4.ip, "-c", "2").returncode == 0


def test_a_lease_written_by_flanneld_is_programmed(cluster):
    (n1,) = start(cluster, 1)
    lease_id = cluster.etcdctl("lease", "grant", "600").split()[1]
    cluster.etcdctl("put", "--lease", lease_id, f"{PREFIX}/subnets/10.244.200.0-24",
                    FLANNEL_VALUE)
    wait_for(lambda: "10.244.200.0/24" in routes(n1), SOON, "flannel peer's route")
    assert "10.244.200.0 lladdr 0e:aa:bb:cc:dd:ee PERMANENT" in n1.ns.ip(
        "neigh", "show", "dev", "flannel.1").stdout
    assert "0e:aa:bb:cc:dd:ee dst 198.51.100.99 self permanent" in n1.ns.run(
        "bridge", "fdb", "show", "dev", "flannel.1").stdout


def test_garbage_leases_are_skipped_and_counted(cluster):
    n1, n2 = start(cluster, 2)
    own = ipam(cluster, n1)["podSubnetThisNode"]
    own25 = own.replace("/24", "-25")
    good = ipam(cluster, n2)["podSubnetThisNode"]
    garbage = {
        "10.244.201.0-24": "not json at all",
        "10.244.202.0-24": '{"PublicIP": 5, "BackendData": {"VtepMAC": "0e:00:00:00:00:02"}}',
        "10.244.203.0-24": '{"PublicIP": "198.51.100.50", "BackendData": {"VtepMAC": "zz"}}',
        "10.244.204.0-24": '{"PublicIP": "999.1.1.1", "BackendData": '
                           '{"VtepMAC": "0e:00:00:00:00:04"}}',
        "no-such-key": FLANNEL_VALUE,
    }
    rejected = {  # decodable, but not something to program
        "10.99.0.0-24": FLANNEL_VALUE.replace("0e:aa:bb:cc:dd:ee", "0e:00:00:00:00:05"),
        own25: FLANNEL_VALUE.replace("0e:aa:bb:cc:dd:ee", "0e:00:00:00:00:06"),
    }
    for key, value in {**garbage, **rejected}.items():
        cluster.etcdctl("put", f"{PREFIX}/subnets/{key}", value)
    wait_for(lambda: set(garbage) <= set(state(cluster, n1)["invalidLeases"]), SOON,
             "invalid leases reported")
    s = state(cluster, n1)
    assert set(rejected) <= set(s["overlays"]["ipv4"]["rejected"])
    assert "outside the network" in s["overlays"]["ipv4"]["rejected"]["10.99.0.0-24"]
    assert "overlaps our own" in s["overlays"]["ipv4"]["rejected"][own25]
    assert metric(cluster, n1, "vxnet_leases_invalid_total") >= len(garbage)
    assert good in routes(n1) and s["overlays"]["ipv4"]["drift"] == {}
    log = cluster.log(n1)
    assert "skipping lease 10.244.201.0-24: value is not JSON" in log
    assert "Traceback" not in log
    assert cluster.api(n1, "/healthz")[0] == 200
    # the agent is still healthy: a valid newcomer is programmed
    cluster.etcdctl("put", f"{PREFIX}/subnets/10.244.210.0-24", FLANNEL_VALUE)
    wait_for(lambda: "10.244.210.0/24" in routes(n1), SOON, "valid lease after garbage")


def test_etcd_outage_keeps_pods_talking_and_the_agent_catches_up(cluster):
    n1, n2 = start(cluster, 2)
    p1, p2 = cluster.add_pod(n1), cluster.add_pod(n2)
    talking(p1, p2)
    pinger = subprocess.Popen(["ip", "netns", "exec", p1.ns.name, "ping", "-i", "0.1", "-c",
                               "360", "-W", "1", str(p2.ip)], stdout=subprocess.PIPE, text=True)
    try:
        replies(pinger, 1, "pods talking before the outage")
        cluster.etcd.stop()
        time.sleep(30)  # what is tested: pods keep talking through 30 s without etcd
        cluster.etcd.start()
        cluster.etcdctl("put", f"{PREFIX}/subnets/10.244.220.0-24", FLANNEL_VALUE)
        wait_for(lambda: "10.244.220.0/24" in routes(n1), 20.0, "change after etcd restart")
        out = pinger.communicate(timeout=60)[0]
    finally:
        pinger.kill()
    sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert got == sent, out
    assert metric(cluster, n1, "vxnet_store_reconnects_total") >= 1
    assert cluster.agents[n1.index].poll() is None


def run_agent(cluster, node, *extra, timeout=20):
    return subprocess.run(["ip", "netns", "exec", node.ns.name,
                           *cluster.agent_argv(node, *extra)], capture_output=True, text=True,
                          timeout=timeout)


def last_line(res):
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr, res.stderr
    return lines[-1]


def test_fatal_problems_exit_nonzero_with_one_clear_line(cluster):
    node = cluster.add_node(1, start_agent=False)
    cluster.etcdctl("del", f"{PREFIX}/config")
    res = run_agent(cluster, node)
    assert res.returncode == 1
    assert last_line(res) == ("vxnet agent: network config: config: no network config at "
                              "/coreos.com/network/config in etcd")
    cluster.etcdctl("put", f"{PREFIX}/config", json.dumps({"Network": "banana"}))
    res = run_agent(cluster, node)
    assert res.returncode == 1
    assert last_line(res) == ("vxnet agent: network config: Network: 'banana' is not a CIDR "
                              "network")
    cluster.etcdctl("put", f"{PREFIX}/config", json.dumps({"Network": "10.244.0.0/16"}))
    res = run_agent(cluster, node, "--node-name", "bad/name")
    assert res.returncode == 1 and "is not a valid node name" in last_line(res)


def test_start_up_waits_for_an_interface_that_is_not_there_yet(cluster):
    node = cluster.add_node(1, start_agent=False)
    cluster.start_agent(node, "--iface", "late0")
    wait_for(lambda: "none of late0 is present" in readyz(cluster, node), 10,
             "/readyz says what start-up waits for")
    node.ns.ip("link", "add", "late0", "type", "veth", "peer", "name", "late0p")
    node.ns.ip("addr", "add", "198.51.100.111/24", "dev", "late0")
    node.ns.ip("link", "set", "late0", "up")
    cluster.wait_ready(node)
    assert ipam(cluster, node)["nodeIP"] == "198.51.100.111"



def test_cni_pods_on_different_nodes_talk_through_the_agent(cluster):
    n1, n2 = start(cluster, 2)
    a, b = cluster.add_cni_pod(n1), cluster.add_cni_pod(n2)
    assert str(a.ip).startswith(ipam(cluster, n1)["podSubnetThisNode"].rsplit(".", 2)[0])
    assert ping(a, b.ip, "-c", "2").returncode == 0
    assert ping(b, a.ip, "-c", "2").returncode == 0


def test_the_demo_runs_green_and_leaves_nothing(capsys):
    from vxnet.lab.demo import run_demo
    from vxnet.lab.netns import netns_names

    before = set(netns_names())
    assert run_demo(nodes=2, pods_per_node=1) is True
    out = capsys.readouterr().out
    assert "RESULT: every pod reaches every other pod" in out
    assert "done: nothing left behind." in out
    assert set(netns_names()) == before


def capture_source(ns, count=1):
    """tcpdump in a namespace: the source address of the first ICMP echo request it sees.
    Returned once it says it is listening, so nothing sent after is missed."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "tcpdump", "-l", "-n", "-c",
                             str(count), "-i", "eth0", "icmp[icmptype] == icmp-echo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, said = time.monotonic() + 10, ""
    while "listening on" not in said:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([proc.stderr], [], [], left)[0], \
            f"tcpdump did not start: {said!r}"
        chunk = os.read(proc.stderr.fileno(), 4096).decode()  # not readline: its buffer
        assert chunk, f"tcpdump ended: {said!r}"  # could hold the line while select waits
        said += chunk
    return proc


def test_ip_masq_hides_pods_going_out_but_not_between_pods(cluster):
    n1 = cluster.add_node(1, start_agent=False)
    cluster.start_agent(n1, "--ip-masq")
    n2 = cluster.add_node(2)
    for n in (n1, n2):
        cluster.wait_ready(n)
    assert "FLANNEL_IPMASQ=true" in cluster.subnet_env(n1).read_text()
    outside, outside_ip = cluster.lab.add_host("out", 200)
    p1, p2 = cluster.add_cni_pod(n1), cluster.add_cni_pod(n2)

    cap = capture_source(outside)
    # the outside host has no route to pods: only a masqueraded ping can be answered
    assert ping(p1, outside_ip, "-c", "2").returncode == 0
    line = cap.communicate(timeout=10)[0]
    assert f"IP {n1.ip} > {outside_ip}" in line, line

    cap = capture_source(p2.ns)
    assert ping(p1, p2.ip).returncode == 0
    line = cap.communicate(timeout=10)[0]
    assert f"IP {p1.ip} > {p2.ip}" in line, line  # pod to pod: the pod's own address

    n1.ns.run("nft", "delete", "table", "ip", "vxnet")
    # a repair is counted as it is found, before the table is loaded again: wait for both
    wait_for(lambda: "masquerade" in n1.ns.run("nft", "list", "table", "ip", "vxnet",
                                               check=False).stdout, SOON, "rules back")
    assert metric(cluster, n1, "vxnet_masquerade_repairs_total") == 1


def test_status_and_leases_commands(cluster):
    n1, n2 = start(cluster, 2)
    cluster.etcdctl("put", f"{PREFIX}/subnets/10.244.230.0-24", "junk")
    vxnet = list(cluster.vxnet)
    out = n1.ns.run(*vxnet, "status").stdout
    info = ipam(cluster, n2)
    assert f"node       {n1.name}" in out and "ready" in out
    assert info["leaseKey"] in out and info["vtepMAC"] in out and "drift: none" in out
    assert "10.244.230.0-24: value is not JSON" in out
    assert "VXLAN allow-list: UDP 8472 from 1 peer IPs, in step" in out
    wait_for(lambda: "FORWARD accept rules: iptables (nf_tables), in place, 0 repairs" in
             n1.ns.run(*vxnet, "status").stdout, SOON, "the FORWARD rules written")
    as_json = json.loads(n1.ns.run(*vxnet, "status", "--json").stdout)
    assert as_json["state"]["ready"] is True
    out = n1.ns.run(*vxnet, "leases", "--etcd-endpoints", cluster.endpoint).stdout
    assert info["leaseKey"] in out and "node2" in out and "INVALID" in out
    res = n1.ns.run(*vxnet, "status", "--healthz-port", "1", check=False)
    assert res.returncode == 1 and "cannot read http://127.0.0.1:1/v1/ipam" in res.stderr
    assert "Traceback" not in res.stderr


def test_systemd_hears_ready_only_once_subnet_env_and_the_first_sync_are_done(cluster):
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    where = Path(tempfile.mkdtemp(prefix="vxn-", dir="/tmp"))  # AF_UNIX paths: 108 bytes
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        srv.bind(str(where / "notify"))
        srv.settimeout(30)
        node = cluster.add_node(1, start_agent=False)
        cluster.start_agent(node, "--iface", "late0", env={
            "NOTIFY_SOCKET": str(where / "notify"), "WATCHDOG_USEC": "2000000"})
        first = srv.recv(4096).decode()  # start-up says what it waits for, and is not ready
        assert first.startswith("STATUS=") and "READY=1" not in first, first
        wait_for(lambda: "late0" in srv.recv(4096).decode(), 30, "STATUS names the wait")
        assert not cluster.subnet_env(node).exists()
        node.ns.ip("link", "add", "late0", "type", "veth", "peer", "name", "late0p")
        node.ns.ip("addr", "add", "198.51.100.111/24", "dev", "late0")
        node.ns.ip("link", "set", "late0", "up")
        while "READY=1" not in (msg := srv.recv(4096).decode()):
            pass
        assert cluster.subnet_env(node).exists()  # written before READY=1 ...
        assert cluster.api(node, "/readyz")[0] == 200  # ... and the first sync done
        assert "STATUS=ready: lease 10.244." in msg
        wait_for(lambda: srv.recv(4096) == b"WATCHDOG=1", 5, "watchdog pings from the loop")
    finally:
        srv.close()
        shutil.rmtree(where, ignore_errors=True)


def test_cleanup_leaves_the_node_as_it_was_before_the_agent(cluster):
    n1 = cluster.add_node(1, start_agent=False)
    n2 = cluster.add_node(2)

    def dumps():
        return {what: n1.ns.run(*argv).stdout for what, argv in {
            "link": ("ip", "-d", "link"), "route4": ("ip", "route"),
            "route6": ("ip", "-6", "route"), "neigh": ("ip", "neigh", "show", "nud", "permanent"),
            "fdb": ("bridge", "fdb"), "nexthop": ("ip", "nexthop"),
            "ruleset": ("nft", "list", "ruleset")}.items()}

    for tool in ("iptables", "ip6tables"):  # a host's filter table, where the FORWARD rules go
        n1.ns.run(tool, "-P", "FORWARD", "ACCEPT")
    before = dumps()
    conflist = cluster.workdir / "node1" / "net.d" / "10-vxnet.conflist"
    cluster.start_agent(n1, "--ip-masq", "--cni-conf-file", str(conflist))
    cluster.wait_ready(n1)
    cluster.wait_ready(n2)
    wait_for(lambda: "flannel.1" in n1.ns.run("bridge", "fdb").stdout, 5, "a peer programmed")
    wait_for(lambda: metric(cluster, n1, "vxnet_forward_rules_in_place") == 1, SOON,
             "the FORWARD rules written")
    assert conflist.exists()
    vxnet = [*cluster.vxnet, "cleanup", "--subnet-file",
             str(cluster.subnet_env(n1)), "--cni-conf-file", str(conflist), "--release",
             "--etcd-endpoints", cluster.endpoint, "--node-name", "node1"]
    refused = n1.ns.run(*vxnet, check=False)
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    key = ipam(cluster, n1)["leaseKey"]
    cluster.stop_agent(n1)
    out = n1.ns.run(*vxnet).stdout
    assert "deleted device flannel.1" in out and f"released lease {key}" in out
    assert "deleted the FORWARD accept rules (iptables-nft chain VXNET-FWD)" in out
    assert dumps() == before
    assert not cluster.subnet_env(n1).exists() and not conflist.exists()
    assert cluster.etcdctl("get", f"{PREFIX}/subnets/{key}") == ""
