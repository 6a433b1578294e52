"""On-demand neighbours against the default, on a lab node with N fake peers in etcd:

  first packet  a packet to a remote pod nothing is known about yet -> the agent's answer in the
                kernel (the neighbour REACHABLE), as the node sees it on netlink: p50/p99/max
  entries       kernel entries on the VXLAN device for N peers and M remote pods in use, for
                up-front (the default), on-demand neighbours, and on-demand neighbours + FDB
  scan          a burst of sends to A addresses at once (a pod scanning the network, half of
                them owned by no node): answered / limited / unknown, /healthz throughout

    sudo .venv/bin/python bench/ondemand_bench.py --peers 5000 --active 10,100,500 --scan 1000
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import threading
import time
from pathlib import Path

from vxnet.kernel import netlink as nl
from vxnet.lab.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_bench import CONFIG, in_ns, pct, reset_node
from bench.kernel_bench import peer

HERE = str(Path(__file__).resolve())
MODES = {"up-front": ("up-front", "up-front"), "on-demand": ("on-demand", "up-front"),
         "on-demand+fdb": ("on-demand", "on-demand")}


def remote_pod(i: int, n_peers: int) -> str:
    """The i-th remote pod in use: spread over the peers, one address per pod."""
    p = peer(1 + i % n_peers)
    return str(p.subnet[2 + i // n_peers])


# -- helpers that run inside the node's namespace (`python ondemand_bench.py _probe ...`) --

async def _probe(addrs: list[str]) -> None:
    """For each address in turn: one UDP datagram, then the time until its neighbour entry is
    REACHABLE (the agent's answer written). Paced at 1 ms, under the agent's answer rate (2 000
    a second): faster, the limiter defers some answers by the kernel's 1 s retry."""
    sock = nl.RtnlSocket([nl.RTNLGRP_NEIGH])
    loop = asyncio.get_running_loop()
    reachable: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    def readable() -> None:
        now = time.perf_counter()
        for t, buf, off, end in sock.recv_events():
            if t == nl.RTM_NEWNEIGH:
                fam, _, state, _, dst, _ = nl.parse_neigh(buf, off, end)
                if fam == nl.AF_INET and dst and state & nl.NUD_REACHABLE:
                    reachable.put_nowait((now, dst))

    loop.add_reader(sock.fileno(), readable)
    out = []
    for a in addrs:
        want = ipaddress.ip_address(a).packed
        t0 = time.perf_counter()
        send(a)
        while True:
            at, dst = await asyncio.wait_for(reachable.get(), 5)
            if dst == want:
                out.append(at - t0)
                break
        await asyncio.sleep(0.001)
    print(json.dumps(out))


def send(addr: str) -> None:
    """One datagram from a socket of its own: the fake peers' public IPs answer no ARP, so each
    packet stays charged to its socket for seconds, and a shared socket's send buffer would
    fill (after ~256 packets) and block the sender -- a wait that is not the agent's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"x", (addr, 9))


def _scan(addrs: list[str]) -> None:
    refused = 0
    for a in addrs:
        try:
            send(a)
        except OSError:  # the kernel's own neighbour table limit (gc_thresh3)
            refused += 1
    print(json.dumps({"refused": refused}))


# -- the benchmark proper --

def entries(node) -> dict[str, int]:
    neigh = json.loads(node.ns.ip("-j", "neigh", "show", "dev", "flannel.1").stdout)
    fdb = json.loads(node.ns.run("bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout)
    routes = node.ns.ip("route", "show", "proto", "118").stdout.splitlines()
    nexthops = node.ns.ip("nexthop", "show", "protocol", "118").stdout.splitlines()
    return {"routes": len(routes), "nexthops": len(nexthops),
            "neigh": sum("lladdr" in e for e in neigh),
            "fdb": sum(bool(e.get("dst")) for e in fdb)}


def misses(c: Cluster, node) -> dict[str, int]:
    ov = json.loads(c.api(node, "/v1/state")[1])["overlays"]["ipv4"]
    return ov.get("onDemand", {}).get("misses", {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--active", default="10,100,500", help="remote pods in use, cumulative")
    ap.add_argument("--scan", type=int, default=1000, help="addresses in the scan burst")
    args = ap.parse_args(argv)
    n, actives = args.peers, [int(m) for m in args.active.split(",")]

    latencies: list[tuple[float, str, int]] = []  # (seconds, mode, probe number)
    table: list[tuple[str, int, dict[str, int]]] = []
    with Cluster("odb", config=CONFIG) as c:
        c.start()
        node = c.add_node(1, start_agent=False)
        in_ns(c.lab.fabric.name, "_load", c.endpoint, str(n))  # type: ignore[union-attr]
        for mode, (neigh, fdb) in MODES.items():
            reset_node(node)
            c.start_agent(node, "--neighbours", neigh, "--fdb", fdb)
            c.wait_ready(node, 120)
            done = 0
            for m in actives:
                addrs = [remote_pod(i, n) for i in range(done, m)]
                if mode == "up-front":
                    in_ns(node.ns.name, "_scan", *addrs, script=HERE)
                else:
                    got = json.loads(in_ns(node.ns.name, "_probe", *addrs, script=HERE).stdout)
                    latencies += [(x, mode, done + i) for i, x in enumerate(got)]
                done = m
                table.append((mode, m, entries(node)))
            if mode == "on-demand":
                scan = scan_burst(c, node, n, actives[-1], args.scan)
            c.stop_agent(node)

    print(f"kernel entries on the VXLAN device, {n} peers, M remote pods in use:")
    print(f"{'mode':>14} | {'M':>5} | {'routes':>6} | {'nexthops':>8} | {'neigh':>6} | "
          f"{'fdb':>5} | {'total':>6}")
    for mode, m, e in table:
        print(f"{mode:>14} | {m:>5} | {e['routes']:>6} | {e['nexthops']:>8} | {e['neigh']:>6} | "
              f"{e['fdb']:>5} | {sum(e.values()):>6}")
    ms = [x * 1000 for x, _, _ in latencies]
    worst = max(latencies)
    print(f"\nfirst packet, {n} peers (send -> answer REACHABLE in the kernel), {len(ms)} "
          f"misses: p50 {pct(ms, .5):.2f} ms  p99 {pct(ms, .99):.2f} ms  max {max(ms):.2f} ms "
          f"({worst[1]}, probe {worst[2]})")
    print(f"\nscan of {args.scan} addresses at once (half owned by no node): {scan}")
    return 0


def scan_burst(c: Cluster, node, n: int, first: int, count: int) -> str:
    """Sends to `count` fresh addresses as fast as the node can, half in no node's subnet,
    while /healthz is polled; what the agent made of them."""
    # the kernel's neighbour table is small (gc_thresh3, 1024 for the whole host): start empty
    node.ns.ip("neigh", "flush", "dev", "flannel.1")
    owned = [remote_pod(i, n) for i in range(first, first + count // 2)]  # not probed yet
    unowned = [str(ipaddress.ip_address("10.250.0.0") + i) for i in range(count - len(owned))]
    before = misses(c, node)
    health: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            health.append(c.api(node, "/healthz")[0])
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        out = in_ns(node.ns.name, "_scan", *owned, *unowned, script=HERE).stdout
        refused = json.loads(out)["refused"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the agent has seen them all
            after = misses(c, node)
            if sum(after.values()) - sum(before.values()) >= count - refused - 50:
                break
            time.sleep(0.2)
        time.sleep(1)  # answers in flight
    finally:
        stop.set()
        poller.join()
    after = misses(c, node)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)}
    return (f"{diff}; kernel refused {refused} sends (its neighbour table limit); /healthz "
            f"{sum(h == 200 for h in health)}/{len(health)} OK")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        asyncio.run(_probe(sys.argv[2:]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_scan":
        _scan(sys.argv[2:])
    else:
        sys.exit(main())
