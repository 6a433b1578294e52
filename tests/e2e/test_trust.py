"""Issue 9's acceptance: only cluster members steer a node's traffic."""

import json
import time

from tests.e2e.conftest import ipam, metric, ping, wait_for
from vxnet.lab.cluster import PREFIX

FOREIGN = ('{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan",'
           '"BackendData":{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}')


def start(cluster, n, pods=True):
    nodes = [cluster.add_node(i) for i in range(1, n + 1)]
    for node in nodes:
        cluster.wait_ready(node)
    if pods:
        for node in nodes:
            cluster.add_cni_pod(node)
    return nodes


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
    import base64
    item = out["kvs"][0]
    return base64.b64decode(item["value"]).decode(), int(item.get("lease", 0))


def fdb(node) -> str:
    return node.ns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout


def test_a_foreign_takeover_of_a_nodes_lease_is_put_back(cluster):
    nodes = start(cluster, 3)
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
            wait_for(lambda p=peer: f"{info['vtepMAC']} dst {a.ip}" in fdb(p), 1.0,
                     f"{peer.name} points at {a.name} again")
        print(f"put {n}: repaired and peers re-pointed in {time.monotonic() - t0:.2f}s")
        assert "198.51.100.99" not in fdb(nodes[1]) + fdb(nodes[2])
    assert metric(cluster, a, "vxnet_lease_takeovers_total") == 3
    assert all_pairs_ping(nodes) == []
    assert "another writer changed our key" in cluster.log(a)


def test_etcd_with_authentication(cluster):
    import subprocess

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
