"""Issue 10's acceptance: a 3-member etcd cluster under faults while pods ping at 100/s, a burst
of 20 000 lease changes against 5 000 peers, and the agent's cost while etcd is gone."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.e2e.conftest import LAB_CONFIG, ipam, state
from tests.waiting import SOON, wait_for
from vxnet.lab.cluster import API_PORT, PREFIX, Cluster
from vxnet.store.lease import LeaseAttrs

pytestmark = pytest.mark.netns
LEASEGEN = str(Path(__file__).with_name("leasegen.py"))


class Pingers:
    """Pod-to-pod pings at 100/s in a ring over the nodes, counted at the end."""

    def __init__(self, nodes):
        self.procs = []
        for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", a.pods[0].ns.name, "ping", "-n", "-q", "-i", "0.01",
                 "-W", "1", str(b.pods[0].ip)], stdout=subprocess.PIPE, text=True))

    def stop(self) -> list[tuple[int, int]]:
        out = []
        for p in self.procs:
            p.send_signal(signal.SIGINT)
            text = p.communicate(timeout=30)[0]
            sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received",
                                           text).groups())
            out.append((sent, got))
        return out


PROBE = """
import http.client, json, signal, sys, time
worst, failures = 0.0, []
def done(*_):
    print(json.dumps([worst, failures[:5]]), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
        c.request("GET", "/healthz")
        if c.getresponse().status != 200:
            failures.append("status")
        c.close()
    except OSError as e:
        failures.append(str(e))
    worst = max(worst, time.perf_counter() - t0)
    time.sleep(float(sys.argv[2]))
"""


class HealthWatch:
    """/healthz of every node, from a prober process inside each node's namespace (not a
    thread of this busy test process): the worst answer time and every failure."""

    def __init__(self, nodes, every: float = 0.05):
        self.nodes, self.every = nodes, every
        self.procs: list[subprocess.Popen[str]] = []
        self.worst, self.failures = 0.0, []

    def start(self):
        # at a higher priority than everything else here, so that what it measures is the
        # agent's answer, not the prober's own wait for a CPU
        self.procs = [subprocess.Popen(["nice", "-n", "-10", "ip", "netns", "exec", n.ns.name,
                                        sys.executable, "-c", PROBE, str(API_PORT),
                                        str(self.every)],
                                       stdout=subprocess.PIPE, text=True) for n in self.nodes]

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for n, p in zip(self.nodes, self.procs, strict=True):
            try:
                out = p.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                # it answers first thing on SIGTERM; once (a whole-suite run, 2026-11-30) a
                # prober that had answered did not exit within 10 s: its answer is kept
                # (communicate() again loses no output) and the prober is killed
                p.kill()
                out = p.communicate()[0]
                warnings.warn(f"the /healthz prober of {n.name} did not exit on SIGTERM",
                              stacklevel=1)
            worst, failures = json.loads(out)
            self.worst = max(self.worst, worst)
            self.failures += [(n.name, f) for f in failures]


def fake_peer(i: int) -> tuple[str, str, str]:
    # at 10.244.200 and up: the cluster's agents draw from LAB_CONFIG's 10.244.1-99
    key = f"10.244.{200 + i}.0-24"
    value = LeaseAttrs(ipaddress.ip_address(f"198.51.100.{150 + i}"),
                       f"0e:00:00:00:01:{i:02x}").encode().decode()
    return key, value, f"10.244.{200 + i}.0/24"


def put_until_accepted(cluster, key, value, timeout=60.0):
    wait_for(lambda: cluster.etcd.ctl("put", f"{PREFIX}/subnets/{key}", value,
                                      check=False).returncode == 0, timeout,
             "etcd accepting the write")


def propagation(cluster, nodes, i: int, since: float) -> float:
    """Write fake peer i; seconds from `since` until every node's kernel routes to it."""
    key, value, subnet = fake_peer(i)
    put_until_accepted(cluster, key, value)
    for n in nodes:
        wait_for(lambda n=n: subnet in n.ns.ip("route", "show", subnet).stdout, 30,
                 f"{subnet} on {n.name}")
    return time.monotonic() - since


def test_etcd_cluster_faults_never_stop_an_agent_nor_a_ping(tmp_path):
    c = Cluster("res", config=LAB_CONFIG, workdir=tmp_path / "lab", etcd_members=3,
                agent_args=("--resync-interval", "5"))
    with c:
        c.start()
        nodes = [c.add_node(i) for i in (1, 2, 3)]
        for n in nodes:
            c.wait_ready(n)
            c.add_cni_pod(n)
        agents = dict(c.agents)
        pingers, health = Pingers(nodes), HealthWatch(nodes)
        health.start()
        times: dict[str, float] = {}
        try:
            # 1. the leader dies
            leader = c.etcd.leader()
            os.killpg(leader.proc.pid, signal.SIGKILL)
            leader.proc.wait()
            leader.proc = None
            end = time.monotonic()
            times["leader killed"] = propagation(c, nodes, 1, end)
            leader.start()
            # 2. the member node1's agent talks to dies
            used = c.etcd.member_at(state(c, nodes[0])["etcdEndpoint"])
            used.stop()
            times["node1's member killed"] = propagation(c, nodes, 2, time.monotonic())
            used.start()
            # 3. node1's connection to its member is black-holed for 30 s
            used = c.etcd.member_at(state(c, nodes[0])["etcdEndpoint"])
            rules = (f"table inet vx-blackhole {{\n chain out {{\n type filter hook output "
                     f"priority 0;\n ip daddr {used.host} tcp dport 2379 drop\n }}\n}}\n")
            subprocess.run(["ip", "netns", "exec", nodes[0].ns.name, "nft", "-f", "-"],
                           input=rules, text=True, check=True)
            time.sleep(30)
            nodes[0].ns.run("nft", "delete", "table", "inet", "vx-blackhole")
            times["node1 black-holed 30 s"] = propagation(c, nodes, 3, time.monotonic())
            # 4. quorum gone for 15 s
            leader = c.etcd.leader()
            frozen = [leader, next(m for m in c.etcd.members if m is not leader)]
            for m in frozen:
                m.stop()
            time.sleep(15)
            for m in frozen:
                m.start(wait=False)
            end = time.monotonic()
            for m in frozen:
                m.wait_healthy(30)
            times["quorum lost 15 s"] = propagation(c, nodes, 4, end)
        except BaseException:
            for n in nodes:  # what each agent saw, for whoever reads the failure
                print(f"--- {n.name}\n{c.log(n)[-2500:]}")
            raise
        finally:
            health.stop()
            counts = pingers.stop()
        print("\nlease written after the fault ended -> in every kernel:")
        for what, t in times.items():
            print(f"  {what:28s} {t:5.2f} s")
        print(f"pings (sent, received): {counts}; worst /healthz {health.worst * 1000:.0f} ms")
        assert all(p.poll() is None for p in agents.values()), "an agent exited"
        assert all(sent == got and sent > 1000 for sent, got in counts), counts
        assert health.failures == []
        assert all(t < 15 for t in times.values()), times
        for n in nodes:
            restarts = state(c, n)["taskRestarts"]
            assert set(restarts) >= {"watch", "keepalive", "reconciler", "monitor"}


def test_a_burst_of_20000_changes_against_5000_peers(tmp_path):
    config = {"Network": "10.0.0.0/8", "SubnetMin": "10.200.0.0", "Backend": {"Type": "vxlan"}}
    c = Cluster("burst", workdir=tmp_path / "lab", config=config,
                agent_args=("--resync-interval", "30"),
                etcd_args=("--max-txn-ops", "10000", "--max-request-bytes", "33554432"))
    with c:
        c.start()
        gen = ["ip", "netns", "exec", c.lab.fabric.name, sys.executable, LEASEGEN, c.endpoint,
               PREFIX]
        subprocess.run([*gen, "load", "5000"], check=True, timeout=120)
        node = c.add_node(1)
        c.wait_ready(node, timeout=60)
        assert len(state(c, node)["overlays"]["ipv4"]["peers"]) == 5000
        health = HealthWatch([node], every=0.01)
        health.start()
        burst = subprocess.Popen([*gen, "burst", "5000"], stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: burst.stdout.readline().startswith("half"), 120, "half the burst")
            victim = "10.0.6.0/24"  # a peer every round keeps (changed, never deleted)
            node.ns.ip("route", "del", victim)
            t0 = time.monotonic()
            wait_for(lambda: victim in node.ns.ip("route", "show", victim).stdout, SOON,
                     "the deleted route repaired")
            repaired = time.monotonic() - t0
            assert burst.wait(timeout=180) == 0
            final = json.loads(subprocess.run([*gen, "expect", "5000"], check=True,
                                              capture_output=True, text=True).stdout)
            want = {m.lower() for m in final["macs"]}
            wait_for(lambda: fdb_macs(node) == want, 60, "the end state")
        finally:
            health.stop()
            burst.kill()
        routes = {r["dst"] for r in json.loads(node.ns.ip("-j", "route", "show", "proto",
                                                          "118").stdout)}
        assert routes == set(final["subnets"])
        assert state(c, node)["overlays"]["ipv4"]["drift"] == {}
        # leave a small kernel behind: deleting a namespace that still holds 20 000 entries
        # keeps the kernel busy freeing them long after, slowing the tests that come next
        subprocess.run([*gen, "clear", "5000"], check=True, timeout=120)
        wait_for(lambda: not node.ns.ip("route", "show", "proto", "118").stdout, 60,
                 "the peers gone from the kernel")
        lag = state(c, node)["loopLagMaxSeconds"]
        print(f"\nburst: worst /healthz {health.worst * 1000:.0f} ms, longest loop turn "
              f"{lag * 1000:.0f} ms, route repaired in {repaired * 1000:.0f} ms")
        # the figures are reported (docs/benchmarks.md), not asserted: on 2 busy cores the
        # prober's own scheduling is in them too
        assert health.failures == []


def fdb_macs(node) -> set[str]:
    out = node.ns.run("bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout
    return {e["mac"] for e in json.loads(out) if e["mac"] != "00:00:00:00:00:00"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_agent_costs_almost_nothing_while_etcd_is_gone(tmp_path):
    c = Cluster("idle", workdir=tmp_path / "lab", agent_args=("--resync-interval", "30"))
    with c:
        c.start()
        node = c.add_node(1)
        c.wait_ready(node)
        pid = c.agents[1].pid
        c.etcd.stop()
        t0, cpu0 = time.monotonic(), cpu_seconds(pid)
        time.sleep(60)
        used = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        print(f"\nagent CPU with etcd unreachable for 60 s: {used * 100:.2f} % of a core")
        assert c.agents[1].poll() is None
        assert c.api(node, "/healthz")[0] == 200
        # the figure (goal < 5 %) is reported in docs/benchmarks.md, not asserted: on 2 busy
        # cores CI's neighbours are in it too. This only catches a retry loop that spins.
        assert used < 0.25
        c.etcd.start()
        assert ipam(c, node)["ready"] is True
