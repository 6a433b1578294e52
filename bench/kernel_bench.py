"""Programming N peers on an empty VXLAN device: vxnet's data plane vs `ip -batch` +
`bridge -batch` of the same entries, and the no-op resync. Each run gets a fresh namespace;
the contenders alternate order run by run; medians with min-max are printed.

    sudo .venv/bin/python bench/kernel_bench.py --sizes 1000,5000,20000 --reps 5
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
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


class Clock:
    """Wall time and this process's CPU time, user (vxnet's Python) and system (the kernel's
    own work for our requests), of what runs inside `with`."""

    def __enter__(self) -> Clock:
        self._t0, self._r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *_: object) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self._t0
        self.user, self.sys = r.ru_utime - self._r0.ru_utime, r.ru_stime - self._r0.ru_stime


CPU: dict[int, list[tuple[float, float]]] = {}  # peers -> (user, sys) seconds of each vxnet run


def run_vxnet(ns: Netns, ifindex: int, ps: list[Peer]) -> float:
    dp = plane(ns, ifindex)
    with Clock() as c:
        dp.set_peers(ps)
        result = dp.resync()
    assert not result.failures and result.total == 4 * len(ps), result
    dp.kernel.close()
    CPU.setdefault(len(ps), []).append((c.user, c.sys))
    return c.wall


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


def _busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat: idle and iowait are not busy)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def settle(quiet: float = 0.15, deadline: float = 10.0) -> None:
    """Wait until the CPUs are nearly idle for two 100 ms windows in a row (or `deadline`
    passed): a namespace deleted by the previous run is torn down by kernel workers for up to
    seconds afterwards, and whichever contender ran next paid for it."""
    end, calm = time.monotonic() + deadline, 0
    busy0, total0 = _busy()
    while calm < 2 and time.monotonic() < end:
        time.sleep(0.1)
        busy, total = _busy()
        calm = calm + 1 if busy - busy0 <= quiet * max(1, total - total0) else 0
        busy0, total0 = busy, total


def once(fn: Callable[[Netns, int], float]) -> float:
    ns, ifindex = fresh_node()
    try:
        settle()
        return fn(ns, ifindex)
    finally:
        ns.delete()


def noop_resync(n: int, reps: int, passes: int = 10
                ) -> tuple[list[Clock], list[float], int]:
    """(steady no-op passes, `passes` per rep; restart passes with empty caches) at n peers,
    and the writes they made. Many steady passes: one pass is a few tens of ms, and a single
    one per rep measured this machine's hiccups more than the pass."""
    ns, ifindex = fresh_node()
    try:
        ps = peers(n)
        dp = plane(ns, ifindex)
        dp.set_peers(ps)
        dp.resync()
        steady: list[Clock] = []
        restart, writes = [], 0
        for _ in range(reps):
            settle()
            for _ in range(passes):
                with Clock() as c:
                    r = dp.resync()
                steady.append(c)
                writes += r.total
            fresh = plane(ns, ifindex)
            t0 = time.perf_counter()
            fresh.set_peers(ps)
            r2 = fresh.resync()
            restart.append(time.perf_counter() - t0)
            fresh.kernel.close()
            writes += r2.total
        return steady, restart, writes
    finally:
        ns.delete()


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:8.1f} ms ({min(xs) * 1000:.0f}-{max(xs) * 1000:.0f})"


def cpu(runs: list[tuple[float, float]]) -> str:
    """Median user and system CPU of runs, in ms."""
    return (f"user {statistics.median(u for u, _ in runs) * 1000:.0f} / "
            f"sys {statistics.median(s for _, s in runs) * 1000:.0f} ms")


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

    print("\nvxnet's CPU time per run (medians): " + "; ".join(
        f"{n}: {cpu(CPU[n])}" for n in sizes))
    steady, restart, writes = noop_resync(args.noop_size, args.reps)
    print(f"\nno-op resync at {args.noop_size} peers: steady {fmt([c.wall for c in steady])} "
          f"({len(steady)} passes; {cpu([(c.user, c.sys) for c in steady])}); "
          f"restart (new caches, adopt) {fmt(restart)}; kernel writes {writes}")
    if args.noop_size == 5000:
        goals.check("no-op resync, 5 000", statistics.median(c.wall for c in steady) * 1000)
    goals.report()
    if args.plot:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench.plot import save
        save(args.plot, "N peers into an empty VXLAN device (median)", "peers",
             [("milliseconds", medians)], logx=True, logy=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
