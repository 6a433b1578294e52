"""Programming N peers on an empty VXLAN device: vxnet's data plane vs `ip -batch` +
`bridge -batch` of the same entries, and the no-op resync. Each run gets a fresh namespace;
the contenders alternate order run by run; medians with min-max are printed.

    sudo .venv/bin/python bench/kernel_bench.py --sizes 1000,5000,20000 --reps 5
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vxnet.kernel import netlink as nl
from vxnet.kernel.dataplane import Dataplane, PlaneSpec
from vxnet.kernel.mac import vtep_mac
from vxnet.kernel.peer import Peer
from vxnet.kernel.routes import PROTO_VXNET
from vxnet.lab.netns import Netns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import goals

LOCAL = ipaddress.ip_network("10.0.0.0/24")
NETWORK = ipaddress.ip_network("10.0.0.0/8")


def peer(i: int) -> Peer:
    """Fake peer i: subnet 10.<i/256>.<i%256>.0/24 (so i < 51200 stays below 10.200.0.0)."""
    sub = ipaddress.ip_network(f"10.{i >> 8}.{i & 255}.0/24")
    # FDB destinations only need to be addresses; nothing is ever sent to them here. They stay
    # clear of the lab's node addresses (.11-.30): a lease with a node's own public IP is that
    # node's lease (flannel's rule), which is not what a fake peer is for.
    return Peer.of(f"p{i}", sub, ipaddress.ip_address(f"198.51.100.{100 + i % 150}"),
                vtep_mac(sub))


def peers(n: int) -> list[Peer]:
    return [peer(i) for i in range(1, n + 1)]


def fresh_node() -> tuple[Netns, int]:
    ns = Netns.create("bench")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ns.ip("addr", "add", "198.51.100.1/24", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")
    ns.ip("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "198.51.100.1",
          "dev", "eth0", "nolearning", "dstport", "8472")
    ns.ip("addr", "add", "10.0.0.0/32", "dev", "flannel.1")
    ns.ip("link", "set", "flannel.1", "up")
    return ns, json.loads(ns.ip("-j", "link", "show", "flannel.1").stdout)[0]["ifindex"]


def plane(ns: Netns, ifindex: int, use_nexthops: bool = True) -> Dataplane:
    with ns.entered():
        sock = nl.RtnlSocket()
    return Dataplane(sock, PlaneSpec(socket.AF_INET, ifindex, 4, LOCAL, NETWORK,
                                     use_nexthops=use_nexthops))


def run_vxnet(ns: Netns, ifindex: int, ps: list[Peer]) -> float:
    dp = plane(ns, ifindex)
    t0 = time.perf_counter()
    dp.set_peers(ps)
    result = dp.resync()
    elapsed = time.perf_counter() - t0
    assert not result.failures and result.total == 4 * len(ps), result
    dp.kernel.close()
    return elapsed


def batch_files(ps: list[Peer], nexthops: bool) -> tuple[str, str]:
    ip_lines, fdb_lines = [], []
    for i, p in enumerate(ps):
        gw = p.subnet.network_address
        fdb_lines.append(f"fdb replace {p.vtep_mac} dev flannel.1 dst {p.public_ip} self "
                         "permanent")
        ip_lines.append(f"neigh replace {gw} lladdr {p.vtep_mac} dev flannel.1 nud permanent")
        if nexthops:
            nhid = 0x76780000 + i
            ip_lines.append(f"nexthop replace id {nhid} via {gw} dev flannel.1 onlink "
                            f"proto {PROTO_VXNET}")
            ip_lines.append(f"route replace {p.subnet} nhid {nhid} proto {PROTO_VXNET}")
        else:
            ip_lines.append(f"route replace {p.subnet} via {gw} dev flannel.1 onlink "
                            f"proto {PROTO_VXNET}")
    return "\n".join(ip_lines) + "\n", "\n".join(fdb_lines) + "\n"


def run_batch(ns: Netns, ps: list[Peer], nexthops: bool) -> float:
    ip_text, fdb_text = batch_files(ps, nexthops)
    with tempfile.TemporaryDirectory() as d:
        ipf, fdbf = Path(d, "ip"), Path(d, "fdb")
        ipf.write_text(ip_text)
        fdbf.write_text(fdb_text)
        t0 = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns.name, "bridge", "-batch", str(fdbf)], check=True)
        subprocess.run(["ip", "netns", "exec", ns.name, "ip", "-batch", str(ipf)], check=True)
        return time.perf_counter() - t0


def once(fn: Callable[[Netns, int], float]) -> float:
    ns, ifindex = fresh_node()
    try:
        return fn(ns, ifindex)
    finally:
        ns.delete()


def noop_resync(n: int, reps: int) -> tuple[list[float], list[float], int]:
    """(steady no-op pass, restart pass with empty caches) at n peers, and writes seen."""
    ns, ifindex = fresh_node()
    try:
        ps = peers(n)
        dp = plane(ns, ifindex)
        dp.set_peers(ps)
        dp.resync()
        steady, restart, writes = [], [], 0
        for _ in range(reps):
            r = dp.resync()
            steady.append(r.seconds)
            fresh = plane(ns, ifindex)
            t0 = time.perf_counter()
            fresh.set_peers(ps)
            r2 = fresh.resync()
            restart.append(time.perf_counter() - t0)
            fresh.kernel.close()
            writes += r.total + r2.total
        return steady, restart, writes
    finally:
        ns.delete()


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:8.1f} ms ({min(xs) * 1000:.0f}-{max(xs) * 1000:.0f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--noop-size", type=int, default=5000)
    ap.add_argument("--plot", help="also write the convergence figure as a PNG here")
    args = ap.parse_args(argv)
    medians: dict[str, list[tuple[float, float]]] = {"vxnet": [], "ip + bridge -batch (nhid)": [],
                                                     "ip + bridge -batch (gw)": []}
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"{'peers':>6} | {'vxnet':>24} | {'ip+bridge -batch (nhid)':>24} | "
          f"{'ip+bridge -batch (gw)':>24} | vxnet/batch(nhid)")
    for n in sizes:
        ps = peers(n)
        contenders: dict[str, Callable[[Netns, int], float]] = {
            "vxnet": lambda ns, i, ps=ps: run_vxnet(ns, i, ps),
            "nh": lambda ns, i, ps=ps: run_batch(ns, ps, True),
            "gw": lambda ns, i, ps=ps: run_batch(ns, ps, False),
        }
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for rep in range(args.reps):
            order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
            for name in order:
                times[name].append(once(contenders[name]))
        ratio = statistics.median(times["vxnet"]) / statistics.median(times["nh"])
        for label, name in zip(medians, ("vxnet", "nh", "gw"), strict=True):
            medians[label].append((n, statistics.median(times[name]) * 1000))
        print(f"{n:>6} | {fmt(times['vxnet'])} | {fmt(times['nh'])} | {fmt(times['gw'])} | "
              f"{ratio:.2f}x", flush=True)
        if f"kernel path / ip -batch, {goals.size(n)}" in goals.GOALS:
            goals.check(f"kernel path / ip -batch, {goals.size(n)}", ratio)

    steady, restart, writes = noop_resync(args.noop_size, args.reps)
    print(f"\nno-op resync at {args.noop_size} peers: steady {fmt(steady)}; "
          f"restart (new caches, adopt) {fmt(restart)}; kernel writes {writes}")
    if args.noop_size == 5000:
        goals.check("no-op resync, 5 000", statistics.median(steady) * 1000)
    goals.report()
    if args.plot:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench.plot import save
        save(args.plot, "N peers into an empty VXLAN device (median)", "peers",
             [("milliseconds", medians)], logx=True, logy=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
