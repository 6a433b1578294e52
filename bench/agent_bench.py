"""Agent-level figures on a lab node with N fake peers in etcd:

  cold      process start -> /readyz with every peer in the kernel; peak RSS; against
            `ip -batch` + `bridge -batch` of the same entries, alternating run by run
  latency   etcd put/change/delete -> the entry seen on a netlink monitor (p50/p99/max)
  idle      CPU of an idle agent over a window, and the cost of its periodic resyncs

    sudo .venv/bin/python bench/agent_bench.py --sizes 1000,5000,20000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

from vxnet.kernel import netlink as nl
from vxnet.lab.cluster import PREFIX, Cluster
from vxnet.store.lease import LeaseAttrs
from vxnet.store.paths import Paths

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import goals
from bench.kernel_bench import batch_files, fmt, peer, peers

# the agent's own subnet comes from 10.200.0.0 up, clear of the fake peers below it
CONFIG = {"Network": "10.0.0.0/8", "SubnetMin": "10.200.0.0", "Backend": {"Type": "vxlan"}}
HERE = str(Path(__file__).resolve())


# -- helpers that run inside a namespace (called as `python agent_bench.py _load|_latency`) --

def _value(p) -> bytes:
    return LeaseAttrs(p.public_ip, p.vtep_mac).encode()


async def _load(endpoint: str, n: int) -> None:
    from vxnet.store import txn
    from vxnet.store.etcd import Etcd
    from vxnet.store.paths import Paths

    etcd, paths = Etcd(endpoint, timeout=30), Paths(PREFIX)
    lease = await etcd.grant(3600)
    ps = peers(n)
    # each with its owner record, as a vxnet node writes its lease; 50 leases a transaction
    # (etcd takes 128 operations in one): 20 000 concurrent single puts took minutes
    for i in range(0, n, 50):
        ops = []
        for p in ps[i:i + 50]:
            key = str(p.subnet).replace("/", "-")
            ops += [txn.put(paths.subnet(key), _value(p), lease),
                    txn.put(paths.owner(key), p.key.encode(), lease)]
        await etcd.txn([], ops)
    await etcd.close()


def node_status(name: str, ip: str, i: int) -> dict[str, Any]:
    """What a kubelet reports of its Node, the bulk of a real Node object (~8 KB of JSON here,
    10-20 KB in the field, most of it the images the node holds): the agent lists all of it."""
    stamp = "2026-12-01T00:00:00Z"
    conditions = [{"type": t, "status": "False", "reason": f"KubeletHasNo{t}",
                   "message": f"kubelet has no {t}", "lastHeartbeatTime": stamp,
                   "lastTransitionTime": stamp}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp,
                       "lastTransitionTime": stamp})
    resources = {"cpu": "8", "memory": "32827480Ki", "pods": "110",
                 "ephemeral-storage": "101430960Ki", "hugepages-2Mi": "0"}
    return {"capacity": resources, "allocatable": resources, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": ip},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": f"{i:032x}", "systemUUID": f"{i:032x}",
                         "bootID": f"{i * 7:032x}", "kernelVersion": "6.1.0-28-amd64",
                         "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "containerRuntimeVersion": "containerd://1.7.24",
                         "kubeletVersion": "v1.31.4", "kubeProxyVersion": "v1.31.4",
                         "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": [f"registry.example/team{k}/app{k}@sha256:{i * 31 + k:064x}",
                                  f"registry.example/team{k}/app{k}:v1.{k}.{i % 10}"],
                        "sizeBytes": 10_000_000 + k * 1234} for k in range(30)]}


def _load_kube(c: Cluster, n: int) -> None:
    """n peers as flanneld-annotated Nodes with their podCIDRs and a kubelet's status, through
    the API server."""
    import concurrent.futures

    from vxnet.store.kubestore import DEFAULT_PREFIX, Annotations

    ann, kube = Annotations(DEFAULT_PREFIX), c.kubeapi

    def node(p) -> None:
        name = f"peer{p.key[1:]}"
        status, body = kube.request("POST", "/api/v1/nodes", {  # type: ignore[union-attr]
            "metadata": {"name": name, "annotations": ann.of(LeaseAttrs(
                p.public_ip, p.vtep_mac))},
            "spec": {"podCIDR": str(p.subnet), "podCIDRs": [str(p.subnet)]},
            "status": node_status(name, str(p.public_ip), int(p.key[1:]))})
        assert status == 201, (status, body)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(node, peers(n)))


async def _churn(endpoint: str, rate: float, n: int) -> None:
    """Change existing peers' MACs at `rate` a second (a busy cluster) until terminated."""
    from vxnet.store.etcd import Etcd
    from vxnet.store.paths import Paths

    etcd, paths = Etcd(endpoint, timeout=10), Paths(PREFIX)
    lease = await etcd.grant(3600)
    t0, i = time.perf_counter(), 0
    while True:
        p = peer(i % n + 1)
        mac = f"0e:{(i // n) % 200 + 16:02x}:" + p.vtep_mac[6:]
        await etcd.put(paths.subnet(str(p.subnet).replace("/", "-")),
                       LeaseAttrs(p.public_ip, mac).encode(), lease)
        i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))


class _Writer:
    """The latency driver's etcd writes: one prepared HTTP/1.1 request per write to etcd's JSON
    gateway, sent in one socket write, its answer read by Content-Length. httpx would add
    ~3 ms of the driver's own Python per write here (more than etcd's commit), and the figure
    is meant to be etcd's and the agent's."""

    def __init__(self, endpoint: str) -> None:
        self.host, port = endpoint.rsplit("/", 1)[1].rsplit(":", 1)
        self.port = int(port)

    async def __aenter__(self) -> _Writer:
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        self.w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.w.close()

    async def send(self, path: str, body: dict[str, str]) -> None:
        raw = json.dumps(body).encode()
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
        head = await asyncio.wait_for(self.r.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"etcd: {head[:200]!r}")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await asyncio.wait_for(self.r.readexactly(length), 10)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.send("/v3/kv/put", {"key": b64encode(key).decode(),
                                       "value": b64encode(value).decode()})

    async def delete(self, key: bytes) -> None:
        await self.send("/v3/kv/deleterange", {"key": b64encode(key).decode()})


async def _latency(endpoint: str, ops: int, base: int) -> None:
    """Serial puts/changes/deletes; for each, the time until its netlink notification."""
    async with _Writer(endpoint) as etcd:
        await _serial(etcd, Paths(PREFIX), ops, base)


async def _serial(etcd: _Writer, paths: Paths, ops: int, base: int) -> None:
    sock = nl.RtnlSocket([nl.RTNLGRP_NEIGH, nl.RTNLGRP_IPV4_ROUTE])
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[tuple[float, tuple[int, bytes]]] = asyncio.Queue()

    def readable() -> None:  # timestamped on arrival, not when the driver gets round to it
        now = time.perf_counter()
        for t, buf, off, end in sock.recv_events():
            if t in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
                r = nl.parse_route(buf, off, end)
                if r is not None:
                    seen.put_nowait((now, (t, r[2])))
            elif t == nl.RTM_NEWNEIGH:
                fam, _, _, _, _, mac = nl.parse_neigh(buf, off, end)
                if fam == nl.AF_BRIDGE and mac:
                    seen.put_nowait((now, (t, mac)))

    loop.add_reader(sock.fileno(), readable)
    out: dict[str, list[float]] = {"add": [], "change": [], "delete": [], "acked": []}
    for i in range(ops):
        p = peer(base + i // 3 + 1)
        key = paths.subnet(str(p.subnet).replace("/", "-"))
        kind = ("add", "change", "delete")[i % 3]
        if kind == "add":
            value, want = _value(p), (nl.RTM_NEWROUTE, p.subnet.network_address.packed)
        elif kind == "change":
            mac = "0e:ff:" + p.vtep_mac[6:]
            value = LeaseAttrs(p.public_ip, mac).encode()
            want = (nl.RTM_NEWNEIGH, bytes.fromhex(mac.replace(":", "")))
        else:
            value, want = None, (nl.RTM_DELROUTE, p.subnet.network_address.packed)
        while not seen.empty():
            seen.get_nowait()
        t0 = time.perf_counter()
        if value is None:
            await etcd.delete(key)
        else:
            await etcd.put(key, value)
        acked = time.perf_counter()
        while True:
            at, got = await asyncio.wait_for(seen.get(), 5)
            if got == want:
                out[kind].append(at - t0)
                out["acked"].append(max(0.0, at - acked))
                break
    loop.remove_reader(sock.fileno())
    print(json.dumps(out))


# -- the benchmark proper --

def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def in_ns(ns: str, *args: str, script: str = HERE) -> subprocess.CompletedProcess[str]:
    """A benchmark script's helper (`script _name args...`) run inside a namespace."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, script, *args],
                          capture_output=True, text=True, check=True, timeout=600)


def metric(c: Cluster, node, name: str) -> float:
    for line in c.api(node, "/metrics")[1].splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def histogram(c: Cluster, node, name: str) -> dict[str, float]:
    """A histogram's cumulative buckets by upper bound, with its sum and count."""
    out = {}
    for line in c.api(node, "/metrics")[1].splitlines():
        if line.startswith(name + "_bucket{"):
            out[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith((name + "_sum ", name + "_count ")):
            out[line.split(" ")[0].rsplit("_", 1)[1]] = float(line.rsplit(" ", 1)[1])
    return out


def latency(c: Cluster, node, n: int, ops: int, churn: float, base: int
            ) -> tuple[dict[str, list[float]], list[float]]:
    """Event latency per kind (and after etcd's ack), printed with the agent's own share;
    with `churn` > 0 under that many other lease changes a second."""
    bg = None if not churn else subprocess.Popen(
        ["ip", "netns", "exec", c.lab.fabric.name, sys.executable, HERE,  # type: ignore[union-attr]
         "_churn", c.endpoint, str(churn), str(n)])
    try:
        own0 = histogram(c, node, "vxnet_event_to_kernel_seconds")
        res = json.loads(in_ns(node.ns.name, "_latency", c.endpoint, str(ops), str(base)).stdout)
        own = {le: v - own0.get(le, 0) for le, v in
               histogram(c, node, "vxnet_event_to_kernel_seconds").items()}
    finally:
        if bg is not None:
            bg.terminate()
            bg.wait()
    acked = res.pop("acked")
    every = [x for xs in res.values() for x in xs]
    print(f"\nevent latency, {n} peers held, {len(every)} operations"
          f"{f' under {churn:g} other changes/s' if churn else ''} (etcd put sent -> netlink; "
          "'after ack': from etcd's reply, i.e. without etcd's own commit):")
    for kind, xs in [*res.items(), ("all", every), ("after ack", acked)]:
        print(f"  {kind:>9}: p50 {pct(xs, .5) * 1000:6.2f} ms  p99 {pct(xs, .99) * 1000:6.2f}"
              f" ms  max {max(xs) * 1000:6.2f} ms")
    total = own.pop("count") or 1
    if churn == 100:
        goals.check("own part p99", 1000 * min(
            (float(le) for le, v in own.items() if le != "sum" and v / total >= 0.99),
            default=float("inf")))
    print(f"  the agent's own part (a watch batch arriving -> its kernel writes done"
          f"{', the churn included' if churn else ''}), mean "
          f"{own.pop('sum') / total * 1000:.2f} ms: " + ", ".join(
              f"<= {float(le) * 1000:g} ms {v / total:.1%}" for le, v in own.items()
              if 0.0005 <= float(le) <= 0.01))
    return res, acked


def reset_node(node) -> None:
    node.ns.ip("link", "del", "flannel.1", check=False)  # takes routes, neighbours, FDB along


def compile_agent(python: str) -> None:
    """The agent's package compiled to bytecode, as an installed one is (pip, the image): an
    editable checkout run with PYTHONDONTWRITEBYTECODE, or edited since its last run, otherwise
    compiles every changed module on every start (~60 ms of each start -> ready)."""
    where = subprocess.run([python, "-c", "import vxnet; print(vxnet.__path__[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", where], check=True, stdout=subprocess.DEVNULL)


# the agent's own account of its first sync: "... kernel writes in 2.41 s (listing 0.82,
# admission 0.62, allow-list 0.08, kernel 0.89); ready 3.05 s after the process started"
_LAPS = re.compile(rb"kernel writes in [\d.]+ s \(([^)]*)\); ready ([\d.]+) s after")
STAGES = ("before the listing", "listing", "admission", "allow-list", "kernel")
_SYNCED = re.compile(rb"first sync: [^\n]*; ready")  # any build's, for --agent-python


def stages(log: bytes) -> dict[str, float]:
    """Where the agent says its start -> ready went, seconds by stage; before the listing is
    everything up to its first page (Python and imports, config, lease, devices)."""
    m = _LAPS.search(log)
    if m is None:
        return {}
    laps = {k.decode(): float(v) for k, _, v in (x.rpartition(b" ") for x in m[1].split(b", "))}
    return {"before the listing": float(m[2]) - sum(laps.values()), **laps}


def start_timed(c: Cluster, node) -> tuple[subprocess.Popen[bytes], float]:
    """An agent started on a node with no VXLAN device: (process, seconds until ready).
    /readyz is asked every 5 ms only once the agent's log says its first sync is done: asked
    all along, its server thread took the GIL from the first sync 200 times a second (median
    first sync at 5 000 peers 911 ms against 524 ms polled every 100 ms), which no kubelet
    probing every 10 s does."""
    reset_node(node)
    log = c.workdir / node.name / "agent.log"
    start = log.stat().st_size if log.exists() else 0
    t0 = time.perf_counter()
    proc = c.start_agent(node)
    synced = False
    while True:
        if not synced:
            with open(log, "rb") as f:
                f.seek(start)
                synced = _SYNCED.search(f.read()) is not None
        if synced:
            try:
                if c.api(node, "/readyz")[0] == 200:
                    return proc, time.perf_counter() - t0
            except OSError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(c.log(node)[-2000:])
        time.sleep(0.005)


def cold_agent(c: Cluster, node, n: int) -> tuple[float, float, float, dict[str, float]]:
    """(seconds to ready with all n peers programmed, first-sync seconds, peak RSS MiB, where
    the agent says the time went)."""
    log = c.workdir / node.name / "agent.log"
    start = log.stat().st_size if log.exists() else 0
    proc, ready = start_timed(c, node)
    assert metric(c, node, 'vxnet_peers_programmed{family="ipv4"}') == n
    first = metric(c, node, 'vxnet_resync_duration_seconds_sum{family="ipv4",kind="first"}')
    rss = 0.0
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    c.stop_agent(node, signal.SIGTERM)
    with open(log, "rb") as f:
        f.seek(start)
        return ready, first, rss, stages(f.read())


def cold_batch(node, n: int, tmp: Path) -> float:
    reset_node(node)
    node.ns.ip("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", str(node.ip),
               "dev", "eth0", "nolearning", "dstport", "8472")
    node.ns.ip("link", "set", "flannel.1", "up")
    ip_text, fdb_text = batch_files(peers(n), nexthops=True)
    (tmp / "ip").write_text(ip_text)
    (tmp / "fdb").write_text(fdb_text)
    t0 = time.perf_counter()
    node.ns.run("bridge", "-batch", str(tmp / "fdb"), timeout=600)
    node.ns.run("ip", "-batch", str(tmp / "ip"), timeout=600)
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency-peers", type=int, default=5000)
    ap.add_argument("--latency-ops", type=int, default=1000)
    ap.add_argument("--churn", type=float, default=100,
                    help="measure the latency again under this many other changes/s (0: not)")
    ap.add_argument("--idle-peers", type=int, default=5000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--plot-dir", help="also write agent-cold.png and agent-latency.png here")
    ap.add_argument("--store", choices=["etcd", "kube"], default="etcd",
                    help="kube: the peers are Nodes in the lab's API-server simulator, the agent "
                    "in kube mode (start-up and memory only)")
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="passed to every agent (e.g. --agent-arg=--health-interval=0)")
    ap.add_argument("--agent-python", default=sys.executable,
                    help="the interpreter whose vxnet the agents run (another checkout's venv, "
                    "to measure two builds one after the other; the drivers stay this one's)")
    args = ap.parse_args(argv)
    agent = (args.agent_python, "-m", "vxnet")
    compile_agent(args.agent_python)
    sizes = [int(s) for s in args.sizes.split(",")]

    cold: dict[str, list[tuple[float, float]]] = {"start -> ready": [], "first sync": [],
                                                  "ip + bridge -batch": []}
    peak: dict[str, list[tuple[float, float]]] = {"peak RSS": []}
    split: list[tuple[int, dict[str, float]]] = []
    print(f"{'peers':>6} | {'vxnet: start -> ready':>26} | {'first sync (kernel part)':>26} | "
          f"{'ip+bridge -batch':>24} | {'sync/batch':>10} | peak RSS")
    for n in sizes:
        with Cluster("bench", config=CONFIG, agent_args=tuple(args.agent_arg),
                     store=args.store, vxnet=agent) as c:
            c.start()
            if args.store == "kube":
                _load_kube(c, n)
            node = c.add_node(1, start_agent=False)
            if args.store == "etcd":
                in_ns(c.lab.fabric.name, "_load", c.endpoint, str(n))  # type: ignore[union-attr]
            ready, first, batch, rss = [], [], [], []
            for rep in range(args.reps):
                for which in (("agent", "batch") if rep % 2 == 0 else ("batch", "agent")):
                    if which == "agent":
                        r, f, m, where = cold_agent(c, node, n)
                        ready.append(r)
                        first.append(f)
                        rss.append(m)
                        split.append((n, where))
                    else:
                        batch.append(cold_batch(node, n, c.workdir))
            ratio = statistics.median(first) / statistics.median(batch)
            for label, xs in zip(cold, (ready, first, batch), strict=True):
                cold[label].append((n, statistics.median(xs) * 1000))
            peak["peak RSS"].append((n, max(rss)))
            print(f"{n:>6} | {fmt(ready):>26} | {fmt(first):>26} | {fmt(batch):>24} | "
                  f"{ratio:>9.2f}x | {max(rss):.0f} MiB", flush=True)
            if args.store == "etcd":
                size = goals.size(n)
                if f"peak RSS, {size}" in goals.GOALS:
                    goals.check(f"peak RSS, {size}", max(rss))
                if f"start -> ready, {size}" in goals.GOALS:
                    goals.check(f"start -> ready, {size}", statistics.median(ready) * 1000)
    print("\nwhere start -> ready goes, by the agent's own clock (median s; the listing is "
          "etcd's answers read and decoded, the next page asked for meanwhile)")
    print(f"{'peers':>6} | " + " | ".join(f"{s:>18}" for s in STAGES))
    for n in sizes:
        runs = [w for m, w in split if m == n and w]
        print(f"{n:>6} | " + " | ".join(
            f"{statistics.median(w.get(s, 0.0) for w in runs):>18.2f}" if runs else f"{'-':>18}"
            for s in STAGES))
    if args.store == "kube":
        return 0  # the event latency and idle figures (and the goals) are etcd mode's

    with Cluster("bench", config=CONFIG, vxnet=agent,
                 agent_args=("--resync-interval", "30", *args.agent_arg)) as c:
        c.start()
        node = c.add_node(1, start_agent=False)
        n = max(args.latency_peers, args.idle_peers)
        in_ns(c.lab.fabric.name, "_load", c.endpoint, str(n))  # type: ignore[union-attr]
        proc = c.start_agent(node)
        c.wait_ready(node, 120)
        res, acked = latency(c, node, n, args.latency_ops, 0, n)
        if n == 5000:
            goals.check("event latency p99, quiet",
                        pct([x for xs in res.values() for x in xs], .99) * 1000)
        if args.churn:
            churned, _ = latency(c, node, n, args.latency_ops, args.churn, n + args.latency_ops)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        count0 = metric(c, node, 'vxnet_resync_duration_seconds_count{family="ipv4",kind='
                                 '"periodic"}')
        sum0 = metric(c, node, 'vxnet_resync_duration_seconds_sum{family="ipv4",kind="periodic"}')
        time.sleep(args.idle_seconds)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        count = metric(c, node, 'vxnet_resync_duration_seconds_count{family="ipv4",kind='
                                '"periodic"}') - count0
        total = metric(c, node, 'vxnet_resync_duration_seconds_sum{family="ipv4",kind='
                                '"periodic"}') - sum0
        per = f"{total / count * 1000:.0f} ms each" if count else "none in the window"
        print(f"\nidle agent, {n} peers, {args.idle_seconds:.0f} s: CPU {cpu * 100:.2f} % of a "
              f"core; {count:.0f} periodic resyncs ({per})")
    if args.plot_dir:
        from bench.plot import save
        save(f"{args.plot_dir}/agent-cold.png", "An agent joining a cluster of N peers (median)",
             "peers", [("milliseconds", cold), ("MiB", peak)], logx=True)
        series = [*res.items(), ("after ack", acked)]
        if args.churn:
            series.append((f"all, under {args.churn:g} changes/s",
                           [x for xs in churned.values() for x in xs]))
        cdf = {kind: [(x * 1000, (i + 1) / len(xs)) for i, x in enumerate(sorted(xs))]
               for kind, xs in series}
        save(f"{args.plot_dir}/agent-latency.png", f"etcd write -> kernel, {n} peers held "
             "(cumulative share of events)", "milliseconds", [("share of events", cdf)],
             logx=True)
    goals.report()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        asyncio.run(_load(sys.argv[2], int(sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "_churn":
        asyncio.run(_churn(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
    elif len(sys.argv) > 1 and sys.argv[1] == "_latency":
        asyncio.run(_latency(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        sys.exit(main())
