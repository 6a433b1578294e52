"""Issue 12, part 2: subnets computed from node IDs (contiv's IPAM), in flannel's lease format."""

import json

from tests.e2e.conftest import ipam, ping, readyz
from tests.waiting import wait_for
from vxnet.lab.cluster import PREFIX, Cluster

FLANNEL = ('{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan",'
           '"BackendData":{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}')


def test_node_id_allocation(tmp_path):
    config = {"Network": "10.244.0.0/16", "SubnetAllocation": "node-id",
              "Backend": {"Type": "vxlan"}}
    with Cluster("nid", config=config, workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5")) as c:
        c.start()
        nodes = [c.add_node(i) for i in (1, 2, 3)]
        for n in nodes:
            c.wait_ready(n)
            c.add_cni_pod(n)
        for n in nodes:
            info = ipam(c, n)
            assert info["podSubnetThisNode"] == f"10.244.{info['nodeId']}.0/24"
            assert info["subnetAllocation"] == "node-id"
        assert sorted(ipam(c, n)["nodeId"] for n in nodes) == [1, 2, 3]
        assert ping(nodes[0].pods[0], nodes[2].pods[0].ip).returncode == 0
        before = ipam(c, nodes[1])["podSubnetThisNode"]
        c.stop_agent(nodes[1])
        c.start_agent(nodes[1])
        c.wait_ready(nodes[1])
        assert ipam(c, nodes[1])["podSubnetThisNode"] == before
        # node 4's subnet is held by a flanneld-written lease: it says so and takes nothing
        c.etcdctl("put", f"{PREFIX}/subnets/10.244.4.0-24", FLANNEL)
        n4 = c.add_node(4)
        wait_for(lambda: "lease 10.244.4.0-24 holds it" in readyz(c, n4), 15,
                 "node 4 says whose its subnet is")
        assert json.loads(c.etcdctl("get", f"{PREFIX}/subnets/10.244.4.0-24", "--print-value-only"
                                    ) or "{}")["PublicIP"] == "198.51.100.99"
        c.etcdctl("del", f"{PREFIX}/subnets/10.244.4.0-24")  # freed: node 4 carries on
        c.wait_ready(n4, timeout=30)
        assert ipam(c, n4)["podSubnetThisNode"] == "10.244.4.0/24"

