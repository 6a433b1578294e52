"""Pods talk across nodes whose FORWARD policy is DROP (as Docker, ufw or firewalld leave it):
the agent accepts the cluster network in iptables' FORWARD chain (--iptables-forward-rules, on
by default as flanneld's), and a node started without it is the control that shows the policy
bites."""

import shutil

import pytest

from tests.e2e.conftest import metric, ping, state, talking
from tests.waiting import SOON, wait_for
from vxnet.kernel.forward import CHAIN

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not shutil.which("iptables"),
                                 reason="needs Debian's iptables (run `make test`)")]


def test_pods_talk_through_a_forward_policy_of_drop(cluster):
    nodes = [cluster.add_node(i, start_agent=False) for i in (1, 2, 3)]
    for n in nodes:  # before the agents: the node as a firewall left it
        n.ns.run("iptables", "-P", "FORWARD", "DROP")
    n1, n2, n3 = nodes
    cluster.start_agent(n1)
    cluster.start_agent(n2)
    cluster.start_agent(n3, "--no-iptables-forward-rules")
    for n in nodes:
        cluster.wait_ready(n)
    p1, p2, p3 = (cluster.add_cni_pod(n) for n in nodes)
    for n in (n1, n2):  # written right after ready, by the agent's own task
        wait_for(lambda n=n: metric(cluster, n, "vxnet_forward_rules_in_place") == 1, SOON,
                 f"the FORWARD rules on {n.name}")
    talking(p1, p2)
    talking(p2, p1)
    # node 3 forwards nothing to or from its pod, its FORWARD policy drops it: with every node
    # programming both others, that is the only reason a ping can fail
    for n in nodes:
        wait_for(lambda n=n: metric(cluster, n, "vxnet_peers_programmed") == 2, SOON,
                 f"{n.name} programming both others")
    assert ping(p1, p3.ip, "-c", "2").returncode != 0
    assert ping(p3, p1.ip, "-c", "2").returncode != 0
    assert n3.ns.run("iptables", "-S", CHAIN, check=False).returncode != 0
    fwd = state(cluster, n1)["forwardRules"]
    assert fwd == {"backend": "nf_tables", "inPlace": True, "repairs": 0, "error": None}
    assert "forwardRules" not in state(cluster, n3)
    # a firewall reload that flushes FORWARD: back at once, counted, and pods talk again
    n2.ns.run("iptables", "-F", "FORWARD")
    # counted as found, in place once written again: both, in that order
    wait_for(lambda: metric(cluster, n2, "vxnet_forward_rules_repairs_total") == 1 and
             metric(cluster, n2, "vxnet_forward_rules_in_place") == 1, SOON,
             "the jump back on node 2")
    assert ping(p1, p2.ip, "-c", "2").returncode == 0  # back as soon as the rules are
    assert "-P FORWARD DROP" in n2.ns.run("iptables", "-S", "FORWARD").stdout
