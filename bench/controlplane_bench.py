"""The control plane of a cluster bigger than this machine: N simulated nodes' store side --
vxnet's own LeaseManager (acquire) and LeaseWatcher (watch), one etcd connection each, no
kernel -- against a real 3-member etcd cluster on this machine.

  join      all N nodes acquire a lease at once: time until the last holds one
  quiet     lease changes written one by one: time until each reaches every node's watch
  churn     the same while 10 nodes join and 10 leave every second
  etcd      CPU (% of a core, all members), resident memory, requests per second, per phase

    sudo .venv/bin/python bench/controlplane_bench.py --nodes 100,500,1000
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vxnet.lab.cluster import PREFIX, Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_bench import cpu_seconds, pct

HERE = str(Path(__file__).resolve())
# simulated nodes lease below 10.200; the driver's own leases (probes, churn) are above
CONFIG = {"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMax": "10.199.255.0",
          "Backend": {"Type": "vxlan"}}
WORKERS = 2  # processes the simulated nodes are spread over (this machine has 2 cores)


# -- inside the fabric namespace (`python controlplane_bench.py _nodes|_driver ...`) --

async def _nodes(endpoint: str, first: int, count: int, start_at: float, seconds: float
                 ) -> None:
    """`count` nodes: join together at `start_at` (CLOCK_MONOTONIC, shared by processes), then
    watch for `seconds`; prints when each joined and when each revision reached each node."""
    from vxnet.store.config import parse_config
    from vxnet.store.etcd import Etcd
    from vxnet.store.lease import LeaseAttrs
    from vxnet.store.manager import LeaseManager
    from vxnet.store.paths import Paths
    from vxnet.store.store import NodeInfo
    from vxnet.store.watcher import LeaseWatcher

    paths = Paths(PREFIX)
    cfg = parse_config(json.dumps(CONFIG))
    arrivals: dict[int, list[float]] = {}
    joined: list[float] = []

    async def node(i: int) -> None:
        etcd = Etcd(endpoint, timeout=30)
        ip = ipaddress.ip_address("100.64.0.0") + i  # names only: nothing is sent anywhere
        mgr = LeaseManager(etcd, paths, NodeInfo(f"sim{i}", ip, None),
                           lambda key: LeaseAttrs(ip, "0e:00:00:00:00:01"))
        await mgr.acquire(cfg)
        joined.append(time.monotonic())
        watcher = LeaseWatcher(etcd, paths)
        snap = mgr.take_snapshot()
        assert snap is not None  # a full acquire: no preference given
        watcher.adopt(snap)
        try:
            async for batch in watcher.batches():
                now = time.monotonic()
                for ev in batch:
                    arrivals.setdefault(ev.revision, []).append(now)
        finally:
            await etcd.close()

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    tasks = [asyncio.ensure_future(node(i)) for i in range(first, first + count)]
    await asyncio.sleep(max(0.0, start_at + seconds - time.monotonic()))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"joined": joined, "arrivals": arrivals}))


async def _driver(endpoint: str, quiet_at: float, probes: int, churn_at: float, churn_s: float
                  ) -> None:
    """Writes probe leases one at a time (quiet phase), then the same while 10 leases are
    created and 10 deleted every second (churn); prints when each probe revision was written."""
    from vxnet.store.etcd import Etcd
    from vxnet.store.lease import LeaseAttrs
    from vxnet.store.paths import Paths

    etcd, paths = Etcd(endpoint, timeout=30), Paths(PREFIX)
    lease = await etcd.grant(3600)
    value = LeaseAttrs(ipaddress.ip_address("100.127.0.1"), "0e:00:00:00:00:02").encode()
    sent: dict[str, dict[int, float]] = {"quiet": {}, "churn": {}}

    async def probe(phase: str, n: int) -> None:
        t0 = time.monotonic()
        rev = await etcd.put(paths.subnet(f"10.255.{n % 250}.0-24"), value, lease)
        sent[phase][rev] = t0

    await asyncio.sleep(max(0.0, quiet_at - time.monotonic()))
    for n in range(probes):
        await probe("quiet", n)
        await asyncio.sleep(0.2)
    await asyncio.sleep(max(0.0, churn_at - time.monotonic()))
    end, n, alive = churn_at + churn_s, 0, []
    while time.monotonic() < end:
        tick = time.monotonic()
        for _ in range(10):  # 10 nodes join...
            key = paths.subnet(f"10.{200 + n // 250}.{n % 250}.0-24")
            await etcd.put(key, value, lease)
            alive.append(key)
            n += 1
        while len(alive) > 10:  # ...and the 10 that joined a second ago leave
            await etcd.delete(alive.pop(0))
        await probe("churn", n)
        await asyncio.sleep(max(0.0, tick + 1 - time.monotonic()))
    await etcd.close()
    print(json.dumps(sent))


# -- the benchmark proper --

def etcd_metrics(c: Cluster) -> dict[str, float]:
    """Sum over members of gRPC requests handled (etcd's own /metrics)."""
    total = 0.0
    for m in c.etcd.members:  # type: ignore[union-attr]
        text = subprocess.run(["ip", "netns", "exec", c.lab.fabric.name,  # type: ignore
                               sys.executable, "-c", "import sys, urllib.request; print("
                               "urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                               f"{m.endpoint}/metrics"], capture_output=True, text=True,
                              check=True).stdout
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("grpc_server_handled_total{"))
    return {"requests": total}


def etcd_usage(c: Cluster) -> tuple[float, float]:
    """(CPU seconds so far, resident MiB now), all members together."""
    cpu = rss = 0.0
    for m in c.etcd.members:  # type: ignore[union-attr]
        pid = m.proc.pid  # type: ignore[union-attr]
        cpu += cpu_seconds(pid)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
    return cpu, rss


def run(n: int, probes: int, churn_s: float) -> dict[str, object]:
    with Cluster("cpb", config=CONFIG, etcd_members=3) as c:
        c.start()
        endpoint = c.endpoint
        now = time.monotonic()
        start_at = now + 3 + n / 200  # time for the worker processes to come up
        # every node's watch delivers every join to it: N^2 events to digest before it is quiet
        join_budget = 20 + n / 10
        quiet_at = start_at + join_budget
        churn_at = quiet_at + probes * 0.2 + 2
        seconds = churn_at + churn_s + 20 - start_at  # late arrivals still counted
        fab = c.lab.fabric.name  # type: ignore[union-attr]
        per = -(-n // WORKERS)
        procs = [subprocess.Popen(["ip", "netns", "exec", fab, sys.executable, HERE, "_nodes",
                                   endpoint, str(w * per), str(min(per, n - w * per)),
                                   str(start_at), str(seconds)], stdout=subprocess.PIPE,
                                  text=True) for w in range(WORKERS) if w * per < n]
        driver = subprocess.Popen(["ip", "netns", "exec", fab, sys.executable, HERE, "_driver",
                                   endpoint, str(quiet_at), str(probes), str(churn_at),
                                   str(churn_s)], stdout=subprocess.PIPE, text=True)
        marks = {}
        for phase, at in (("join", start_at), ("quiet", quiet_at), ("churn", churn_at),
                          ("end", churn_at + churn_s)):
            time.sleep(max(0.0, at - time.monotonic()))
            marks[phase] = (time.monotonic(), *etcd_usage(c), etcd_metrics(c)["requests"])
        outs = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in procs]
        sent = json.loads(driver.communicate(timeout=120)[0])
    joined = sorted(t for o in outs for t in o["joined"])
    arrivals: dict[int, list[float]] = {}
    for o in outs:
        for rev, ts in o["arrivals"].items():
            arrivals.setdefault(int(rev), []).extend(ts)
    result: dict[str, object] = {"nodes": n, "joined": len(joined),
                                 "join_all_s": joined[-1] - start_at if joined else None,
                                 "join_p50_s": statistics.median(joined) - start_at}
    for phase in ("quiet", "churn"):
        every, worst, short = [], [], []
        for rev, t0 in sent[phase].items():
            got = arrivals.get(int(rev), [])
            every += [t - t0 for t in got]
            if len(got) == len(joined):  # every node that joined saw it
                worst.append(max(got) - t0)
            else:
                short.append(len(got))
        if not worst:
            raise RuntimeError(f"no {phase} change reached all {len(joined)} joined nodes "
                               f"(of {n}); reached {short[:10]}")
        result[phase] = {"probes": len(worst), "missed": len(short),
                         "node_p50_ms": pct(every, .5) * 1000,
                         "node_p99_ms": pct(every, .99) * 1000,
                         "all_p50_ms": pct(worst, .5) * 1000, "all_max_ms": max(worst) * 1000}
    for phase, nxt in (("join", "quiet"), ("quiet", "churn"), ("churn", "end")):
        (t0, cpu0, _, req0), (t1, cpu1, rss1, req1) = marks[phase], marks[nxt]
        result[f"etcd_{phase}"] = {"cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
                                   "rss_mib": rss1, "req_per_s": (req1 - req0) / (t1 - t0)}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="100,500,1000")
    ap.add_argument("--probes", type=int, default=50)
    ap.add_argument("--churn-seconds", type=float, default=20)
    ap.add_argument("--plot", help="also write the figures vs N as a PNG here")
    args = ap.parse_args(argv)
    results = [run(int(n), args.probes, args.churn_seconds) for n in args.nodes.split(",")]
    print("control plane: N simulated nodes (lease acquire + watch, one etcd connection each) "
          "against a 3-member etcd cluster on this machine")
    print(f"{'N':>5} | {'all joined':>10} | {'change -> node p50/p99':>22} | "
          f"{'-> all N p50/max':>17} | {'same, under churn':>26} | etcd CPU % join/quiet/churn"
          " | etcd req/s quiet/churn | etcd RSS MiB")
    for r in results:
        q, ch = r["quiet"], r["churn"]
        e = {p: r[f"etcd_{p}"] for p in ("join", "quiet", "churn")}
        print(f"{r['nodes']:>5} | {r['join_all_s']:>8.2f} s | "  # type: ignore[index]
              f"{q['node_p50_ms']:>8.1f} / {q['node_p99_ms']:>6.1f} ms | "  # type: ignore
              f"{q['all_p50_ms']:>6.1f} / {q['all_max_ms']:>6.1f} ms | "  # type: ignore
              f"{ch['node_p50_ms']:>5.1f}/{ch['node_p99_ms']:>5.1f}, all {ch['all_max_ms']:>6.1f}"
              f" ms | "  # type: ignore[index]
              + " / ".join(f"{e[p]['cpu_pct']:.0f}" for p in e)  # type: ignore[index]
              + f" | {e['quiet']['req_per_s']:.0f} / {e['churn']['req_per_s']:.0f}"  # type: ignore
              f" | {e['churn']['rss_mib']:.0f}")  # type: ignore[index]
    print(json.dumps(results))
    if args.plot:
        from bench.plot import save
        ns = [float(r["nodes"]) for r in results]  # type: ignore[arg-type]

        def series(get):  # type: ignore[no-untyped-def]
            return [(n, get(r)) for n, r in zip(ns, results, strict=True)]
        save(args.plot, "Control plane: N simulated nodes, 3-member etcd", "nodes", [
            ("seconds", {"all N joined (at once)": series(lambda r: r["join_all_s"])}),
            ("ms, change -> all N", {
                "quiet, p50": series(lambda r: r["quiet"]["all_p50_ms"]),
                "quiet, max": series(lambda r: r["quiet"]["all_max_ms"]),
                "under churn, max": series(lambda r: r["churn"]["all_max_ms"])}),
            ("etcd CPU, % of a core", {
                p: series(lambda r, p=p: r[f"etcd_{p}"]["cpu_pct"])
                for p in ("join", "quiet", "churn")})])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_nodes":
        a = sys.argv[2:]
        asyncio.run(_nodes(a[0], int(a[1]), int(a[2]), float(a[3]), float(a[4])))
    elif len(sys.argv) > 1 and sys.argv[1] == "_driver":
        a = sys.argv[2:]
        asyncio.run(_driver(a[0], float(a[1]), int(a[2]), float(a[3]), float(a[4])))
    else:
        sys.exit(main())
