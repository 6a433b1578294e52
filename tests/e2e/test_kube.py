"""Issue 20's acceptance: agents in kube mode (the Kubernetes API as the store) on the namespace
lab, against the API-server simulator (vxnet/lab/kubeapi.py), driven by the real kubectl.

What this shows and what it does not: the simulator speaks the Nodes part of the API as a real
server does (resourceVersions, watch with bookmarks, 410 Gone, patches, TLS, tokens), so the
agent's protocol handling is tested for real; a real API server's scale, latency and its other
resources are not."""

import json
import shutil
import time

import pytest

from tests.e2e.conftest import metric, ping, start
from tests.e2e.test_resilience import Pingers
from tests.waiting import SOON, wait_for
from vxnet.lab.cluster import Cluster

P = "flannel.alpha.coreos.com/"

pytestmark = pytest.mark.skipif(not shutil.which("kubectl"), reason="needs kubectl")


def node_json(cluster, name) -> dict:
    return json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)


def fdb(node) -> str:
    return node.ns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout


def test_three_nodes_in_kube_mode(kube):
    nodes = start(kube, 3)
    pods = {n.index: kube.add_cni_pod(n) for n in nodes}
    for a in nodes:
        for b in nodes:
            if a is not b:
                r = ping(pods[a.index], pods[b.index].ip, "-c", "2")
                assert r.returncode == 0, (a.name, b.name, r.stdout)
    for n in nodes:
        obj = node_json(kube, n.name)
        ann = obj["metadata"]["annotations"]
        assert ann[P + "kube-subnet-manager"] == "true" and ann[P + "backend-type"] == "vxlan"
        assert ann[P + "public-ip"] == str(n.ip)
        mac = json.loads(ann[P + "backend-data"])["VtepMAC"]
        assert mac in fdb(nodes[0] if n is not nodes[0] else nodes[1])
        cidr = obj["spec"]["podCIDR"]
        env = kube.subnet_env(n).read_text()
        assert f"FLANNEL_SUBNET={cidr.replace('.0/24', '.1/24')}" in env

        def network_up(n=n) -> bool:  # said once the first sync is in the kernel
            conditions = node_json(kube, n.name)["status"].get("conditions", [])
            return any(c["type"] == "NetworkUnavailable" and c["status"] == "False"
                       for c in conditions)
        wait_for(network_up, SOON, f"{n.name}'s NetworkUnavailable=False")
    # what an operator sees
    table = kube.kubectl("get", "nodes").stdout
    assert all(n.name in table for n in nodes)


def test_nodes_deleted_and_added_with_kubectl(kube):
    n1, n2, _ = start(kube, 3)
    gone = node_json(kube, "node3")["spec"]["podCIDR"]
    kube.kubectl("delete", "node", "node3")
    for n in (n1, n2):
        wait_for(lambda n=n: gone not in n.ns.ip("route", "show", gone).stdout, SOON,
                 f"{n.name} dropping node3's route")
        assert "198.51.100.13" not in fdb(n)
    # a flanneld node, registered and annotated with kubectl
    manifest = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "flannel9"}}
    # (the simulator serves no OpenAPI schema to validate against)
    kube.kubectl("create", "--validate=false", "-f", "-", input=json.dumps(manifest))
    wait_for(lambda: node_json(kube, "flannel9")["spec"].get("podCIDR"), SOON, "a podCIDR")
    kube.kubectl("annotate", "node", "flannel9", f"{P}backend-type=vxlan",
                 f"{P}kube-subnet-manager=true", f"{P}public-ip=198.51.100.99",
                 f'{P}backend-data={{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}')
    cidr = node_json(kube, "flannel9")["spec"]["podCIDR"]
    for n in (n1, n2):
        wait_for(lambda n=n: cidr in n.ns.ip("route", "show", cidr).stdout, SOON,
                 f"{n.name} programming the flanneld node")
        assert "0e:aa:bb:cc:dd:ee dst 198.51.100.99" in fdb(n)


def test_our_annotations_overwritten_are_put_back(kube):
    n1, n2 = start(kube, 2)
    kube.kubectl("annotate", "--overwrite", "node", "node1", f"{P}public-ip=198.51.100.77")

    def back() -> bool:
        ann = node_json(kube, "node1")["metadata"]["annotations"]
        return ann[P + "public-ip"] == str(n1.ip)
    wait_for(back, SOON, "node1's public-ip put back")
    wait_for(lambda: metric(kube, n1, "vxnet_lease_takeovers_total") >= 1, SOON, "counted")
    wait_for(lambda: f"dst {n1.ip}" in fdb(n2), SOON, "node2 pointing at node1 again")


def test_api_server_frozen_restarted_and_compacted(kube):
    nodes = start(kube, 3)
    for n in nodes:
        kube.add_cni_pod(n)
    agents = dict(kube.agents)
    pingers = Pingers(nodes)
    api = kube._kube()
    try:
        api.freeze()
        time.sleep(30)  # the fault's duration is what is tested: every watch gives up on it
        api.thaw()
        api.restart()
        api.compact()
        # a change made now lands everywhere
        kube.kubectl("delete", "node", "node3")
        for n in nodes[:2]:
            wait_for(lambda n=n: "198.51.100.13" not in fdb(n), 60,
                     f"{n.name} dropping node3 after the outage")
    finally:
        counts = pingers.stop()
    assert all(p.poll() is None for p in agents.values()), "an agent exited"
    # node3's own pings die with its deletion; the pairs between node1 and node2 lose nothing
    assert counts[0][0] == counts[0][1] and counts[0][0] > 300, counts


def test_a_rotated_token_goes_on_and_a_wrong_one_is_refused(kube):
    n1, _ = start(kube, 2)
    kube.set_token(n1, kube._kube().rotate_token("system:node:node1"))  # old one refused now
    kube.kubectl("annotate", "--overwrite", "node", "node1", f"{P}public-ip=198.51.100.77")
    wait_for(lambda: node_json(kube, "node1")["metadata"]["annotations"][P + "public-ip"]
             == str(n1.ip), SOON, "node1 still defending its annotations with the new token")
    kube.stop_agent(n1)
    kube.set_token(n1, "not-a-token")
    proc = kube.start_agent(n1)
    assert proc.wait(30) == 1
    log = kube.log(n1).strip().splitlines()
    assert "401" in log[-1] and "Traceback" not in kube.log(n1)


def test_dual_stack_pod_cidrs(tmp_path):
    config = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/48",
              "Backend": {"Type": "vxlan"}}
    c = Cluster("kube6", store="kube", config=config, workdir=tmp_path / "lab")
    with c:
        c.start()
        n1, n2 = start(c, 2)
        p1, p2 = c.add_cni_pod(n1), c.add_cni_pod(n2)
        # a few tries: a new pod's IPv6 address is tentative until its DAD is done
        for dst in (p2.ip, p2.ip6, ):
            assert ping(p1, dst, "-c", "3").returncode == 0, dst
        assert ping(p2, p1.ip6, "-c", "3").returncode == 0
        obj = node_json(c, "node1")
        assert len(obj["spec"]["podCIDRs"]) == 2
        assert P + "backend-v6-data" in obj["metadata"]["annotations"]


def test_kube_mode_loads_no_grpc(kube):
    start(kube, 1)
    with open(f"/proc/{kube.agents[1].pid}/maps") as f:
        assert "cygrpc" not in f.read()  # gRPC's C core: 10 MiB an etcd-mode agent carries
