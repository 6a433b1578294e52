"""Data-plane throughput between two lab nodes (iperf3, TCP), side by side in one run:

  host          node <-> node over the underlay (the ceiling)
  vxnet         pod <-> pod through vxnet agents (VXLAN, nexthop routes)
  flannel-hand  pod <-> pod through the kernel objects flanneld makes, built with ip/bridge
  vxnet-direct  pod <-> pod through vxnet agents with DirectRouting (no encapsulation)
  direct-hand   pod <-> pod through a hand-made route via the peer's underlay address

Every scenario gets fresh namespaces; scenario order rotates each repetition.

    sudo .venv/bin/python bench/dataplane_bench.py --mtus 1500,9000 --streams 1,4 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from vxnet.kernel.mac import vtep_mac
from vxnet.lab.cluster import Cluster
from vxnet.lab.netns import Netns
from vxnet.lab.topology import Lab

SCENARIOS = ["host", "vxnet", "flannel-hand", "vxnet-direct", "direct-hand"]
Endpoints = tuple[Netns, Netns, str]  # client ns, server ns, server address


def iperf(client: Netns, server: Netns, addr: str, streams: int, seconds: int) -> float:
    """Received Gbit/s of one iperf3 run; a run that did not complete is retried afresh."""
    for _ in range(10):
        srv = subprocess.Popen(["ip", "netns", "exec", server.name, "iperf3", "-s", "-1", "-B",
                                addr], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)  # let the one-shot server listen
            res = client.run("iperf3", "-c", addr, "-t", str(seconds), "-P", str(streams), "-J",
                             check=False, timeout=seconds + 30)
        finally:
            srv.kill()
            srv.wait()
        with contextlib.suppress(ValueError, KeyError):
            return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    raise RuntimeError(f"iperf3 failed ten times: {res.stdout[-500:]}")


def _hand_flannel(lab: Lab, mtu: int, direct: bool) -> Endpoints:
    nodes = [lab.add_node(i, mtu=mtu) for i in (1, 2)]
    subs = {n.index: ipaddress.ip_network(f"10.244.{n.index}.0/24") for n in nodes}
    for n in nodes:
        peer = next(p for p in nodes if p is not n)
        psub = subs[peer.index]
        if direct:
            n.ns.ip("route", "add", str(psub), "via", str(peer.ip), "dev", "eth0")
            continue
        mine = subs[n.index]
        n.ns.ip("link", "add", "flannel.1", "address", vtep_mac(mine), "mtu", str(mtu - 50),
                "type", "vxlan", "id", "1", "local", str(n.ip), "dev", "eth0", "nolearning",
                "dstport", "8472")
        n.ns.ip("addr", "add", f"{mine.network_address}/32", "dev", "flannel.1")
        n.ns.ip("link", "set", "flannel.1", "up")
        n.ns.run("bridge", "fdb", "add", vtep_mac(psub), "dev", "flannel.1", "dst", str(peer.ip),
                 "self", "permanent")
        n.ns.ip("neigh", "add", str(psub.network_address), "lladdr", vtep_mac(psub), "dev",
                "flannel.1", "nud", "permanent")
        n.ns.ip("route", "add", str(psub), "via", str(psub.network_address), "dev", "flannel.1",
                "onlink")
    pods = [lab.add_pod(n, subs[n.index], mtu=mtu if direct else mtu - 50) for n in nodes]
    return pods[0].ns, pods[1].ns, str(pods[1].ip)


@contextlib.contextmanager
def scenario(name: str, mtu: int) -> Iterator[Endpoints]:
    if name in ("vxnet", "vxnet-direct"):
        config = {"Network": "10.244.0.0/16",
                  "Backend": {"Type": "vxlan", "DirectRouting": name == "vxnet-direct"}}
        with Cluster("dp", config=config) as c:
            c.start()
            nodes = [c.add_node(i, start_agent=False) for i in (1, 2)]
            for n in nodes:
                c.lab.fabric.ip("link", "set", f"n{n.index}", "mtu", str(mtu))  # type: ignore[union-attr]
                n.ns.ip("link", "set", "eth0", "mtu", str(mtu))
                c.start_agent(n)
            for n in nodes:
                c.wait_ready(n)
            pod_mtu = mtu if name == "vxnet-direct" else mtu - 50
            pods = [c.lab.add_pod(n, _subnet(c, n), mtu=pod_mtu)  # type: ignore[union-attr]
                    for n in nodes]
            yield pods[0].ns, pods[1].ns, str(pods[1].ip)
        return
    with Lab("dp") as lab:
        if name == "host":
            nodes = [lab.add_node(i, mtu=mtu) for i in (1, 2)]
            yield nodes[0].ns, nodes[1].ns, str(nodes[1].ip)
        else:
            yield _hand_flannel(lab, mtu, direct=name == "direct-hand")


def _subnet(c: Cluster, node) -> ipaddress.IPv4Network:
    from vxnet.store.subnetenv import SubnetEnv
    return SubnetEnv.read(c.subnet_env(node)).subnet  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mtus", default="1500,9000")
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--reps", type=int, default=3)
    # whole seconds: iperf3 reads -t as an integer, and -t 0 means "run forever"
    ap.add_argument("--seconds", type=int, default=3, choices=range(1, 3601), metavar="1..3600")
    args = ap.parse_args(argv)
    mtus = [int(m) for m in args.mtus.split(",")]
    streams = [int(s) for s in args.streams.split(",")]
    got: dict[tuple[str, int, int], list[float]] = {}
    for rep in range(args.reps):
        order = SCENARIOS[rep % len(SCENARIOS):] + SCENARIOS[:rep % len(SCENARIOS)]
        for mtu in mtus:
            for name in order:
                with scenario(name, mtu) as (client, server, addr):
                    for p in streams:
                        got.setdefault((name, mtu, p), []).append(
                            iperf(client, server, addr, p, args.seconds))
    print(f"{'scenario':>13} | {'MTU':>5} | {'streams':>7} | {'Gbit/s median (min-max)':>24} | "
          "vs host")
    for mtu in mtus:
        for p in streams:
            host = statistics.median(got[("host", mtu, p)])
            for name in SCENARIOS:
                xs = got[(name, mtu, p)]
                med = statistics.median(xs)
                print(f"{name:>13} | {mtu:>5} | {p:>7} | {med:8.2f} ({min(xs):.2f}-{max(xs):.2f})"
                      f"{'':>6} | {med / host:5.2f}")
            r1 = statistics.median(got[("vxnet", mtu, p)]) / statistics.median(
                got[("flannel-hand", mtu, p)])
            r2 = statistics.median(got[("vxnet-direct", mtu, p)]) / statistics.median(
                got[("direct-hand", mtu, p)])
            print(f"{'':>13}   MTU {mtu}, {p} stream(s): vxnet / flannel-hand {r1:.2f}; "
                  f"vxnet-direct / direct-hand {r2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
