"""Issue 15's acceptance: each agent probes its peers through the overlay and the underlay and
names what is broken -- a filtered VXLAN port, a small MTU on the way, a node gone -- without
taking itself out of service."""

from __future__ import annotations

import json

import pytest

from tests.waiting import wait_for
from vxnet.lab.cluster import Cluster

pytestmark = pytest.mark.netns
INTERVAL = 1.0  # seconds per round of probes (60 by default)


def health(c, node) -> dict:
    return json.loads(c.api(node, "/v1/health")[1])


def verdicts(c, node) -> dict[str, str | None]:
    """Peer public IP -> diagnosis ("" when healthy, None while not probed yet)."""
    return {p["publicIP"]: (p["diagnosis"] or "") if p["state"] != "unknown" else None
            for p in health(c, node)["peers"].values()}


def expect(c, node, want: dict[str, str], what: str, rounds: float = 2) -> None:
    """Within `rounds` probe intervals (plus a probe's own timeouts), every peer's diagnosis
    starts as wanted ("" for healthy)."""
    def ok() -> bool:
        got = verdicts(c, node)
        return all(got.get(ip) is not None and got[ip].startswith(prefix)
                   for ip, prefix in want.items())
    wait_for(ok, rounds * INTERVAL + 2, f"{node.name}: {what} ({verdicts(c, node)})")


def test_probes_name_what_is_broken(tmp_path):
    with Cluster("hlt", workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5", "--health-interval", str(INTERVAL))) as c:
        c.start()
        n1, n2, n3 = nodes = [c.add_node(i) for i in (1, 2, 3)]
        for n in nodes:
            c.wait_ready(n)
        ip = {n.name: str(n.ip) for n in nodes}
        # all healthy within two intervals of start
        for n in nodes:
            expect(c, n, {ip[o.name]: "" for o in nodes if o is not n}, "all healthy")
        out = n1.ns.run(*c.vxnet, "status").stdout
        assert "peer health: 2 healthy, 0 unhealthy" in out

        # UDP 8472 dropped between node1 and node2 in the underlay's switch
        fab = c.lab.fabric
        fab.run("nft", "-f", "-", input="\n".join([
            "table bridge vxt-block {", "chain block {",
            "type filter hook forward priority 0;",
            f"ip saddr {ip['node1']} ip daddr {ip['node2']} udp dport 8472 drop",
            f"ip saddr {ip['node2']} ip daddr {ip['node1']} udp dport 8472 drop", "}", "}"]))
        expect(c, n1, {ip["node2"]: "overlay blocked, underlay fine", ip["node3"]: ""},
               "node2's overlay blocked")
        expect(c, n2, {ip["node1"]: "overlay blocked, underlay fine"}, "node1's overlay blocked")
        assert c.api(n1, "/readyz")[0] == 200  # a sick peer does not take the node out
        out = n1.ns.run(*c.vxnet, "status").stdout
        assert "1 healthy, 1 unhealthy" in out and "overlay blocked" in out
        assert 'vxnet_peer_health{state="unhealthy"} 1.0' in c.api(n1, "/metrics")[1]
        fab.run("nft", "delete", "table", "bridge", "vxt-block")
        expect(c, n1, {ip["node2"]: ""}, "recovered")
        expect(c, n2, {ip["node1"]: ""}, "recovered")

        # a smaller MTU on one link of the underlay path (node2's switch port)
        fab.ip("link", "set", "n2", "mtu", "1400")
        expect(c, n1, {ip["node2"]: "MTU: small packets pass"}, "MTU diagnosis", rounds=6)
        fab.ip("link", "set", "n2", "mtu", "1500")
        expect(c, n1, {ip["node2"]: ""}, "MTU recovered")

        # node3's network gone entirely
        n3.ns.ip("link", "set", "eth0", "down")
        expect(c, n1, {ip["node3"]: "underlay unreachable", ip["node2"]: ""}, "node3 gone")
        expect(c, n2, {ip["node3"]: "underlay unreachable"}, "node3 gone")
        metrics = c.api(n1, "/metrics")[1]
        assert 'vxnet_probe_rtt_seconds_count{path="overlay"}' in metrics
        assert 'vxnet_probe_failures_total{path="underlay"}' in metrics
