"""The etcd client's own cost, side by side: gRPC (aetcd, what the agent used until issue 21)
against the agent's client over etcd's JSON/HTTP gateway through httpx (etcd >= 3.4 serves /v3/*
as JSON, watches included). The gRPC side needs aetcd, no longer a dependency:
`.venv/bin/pip install aetcd==1.0.0` first.
Each client runs in a fresh process against one lab etcd holding N leases: it imports what it
needs, reads the prefix, opens a watch and receives one event; RSS and threads are read after
each step. Medians of --reps runs, the two alternated.

    sudo .venv/bin/python bench/etcd_client_bench.py --peers 5000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vxnet.lab.etcd import EtcdServer

HERE = str(Path(__file__).resolve())
PREFIX = b"/bench/subnets/"


def status() -> tuple[float, int]:
    """(RSS in MiB, threads) of this process now."""
    rss, threads = 0.0, 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def _grpc(endpoint: str) -> dict[str, tuple[float, int]]:
    """aetcd, the gRPC client the agent used until it moved to the gateway (not a dependency
    any more: `.venv/bin/pip install aetcd==1.0.0` to run this side)."""
    out = {"python": status()}
    import aetcd
    out["imported"] = status()
    host, port = endpoint.rsplit("/", 1)[1].split(":")

    async def run() -> None:
        async with aetcd.Client(host, int(port), timeout=10) as etcd:
            kvs = list(await etcd.get_prefix(PREFIX))
            assert kvs
            out["prefix read"] = status()
            watch = await etcd.watch_prefix(PREFIX)
            await etcd.put(PREFIX + b"new", b"{}")
            async for _ in watch:
                break
            out["watching"] = status()
            await watch.cancel()

    asyncio.run(run())
    return out


def _gateway(endpoint: str) -> dict[str, tuple[float, int]]:
    """The agent's own client (vxnet.store.etcd: the JSON gateway over httpx)."""
    out = {"python": status()}
    from vxnet.store.etcd import Etcd
    out["imported"] = status()

    async def run() -> None:
        etcd = Etcd(endpoint, timeout=10)
        kvs, rev = await etcd.get_prefix(PREFIX)
        assert kvs
        del kvs
        out["prefix read"] = status()
        watch = etcd.watch_prefix(PREFIX, rev + 1)
        first = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.2)
        await etcd.put(PREFIX + b"new", b"{}")
        await asyncio.wait_for(first, 10)
        out["watching"] = status()
        await watch.aclose()
        await etcd.close()

    asyncio.run(run())
    return out


def client(kind: str, endpoint: str) -> dict[str, tuple[float, int]]:
    p = subprocess.run([sys.executable, HERE, "_client", kind, endpoint], capture_output=True,
                       text=True, timeout=120)
    if p.returncode:
        raise RuntimeError(f"{kind} client: {p.stderr[-2000:]}")
    return {k: tuple(v) for k, v in json.loads(p.stdout).items()}  # type: ignore[misc]


def load(etcd: EtcdServer, n: int) -> None:
    """n flannel-shaped leases under PREFIX (etcdctl txn, 100 puts per transaction)."""
    for at in range(0, n, 100):
        ops = "".join(
            f'put {PREFIX.decode()}10.{i >> 8}.{i & 255}.0-24 \'{{"PublicIP":"198.51.100.'
            f'{100 + i % 150}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":'
            f'"0e:00:0a:{i >> 8 & 255:02x}:{i & 255:02x}:00"}}}}\'\n'
            for i in range(at + 1, min(n, at + 100) + 1))
        etcd.ctl("txn", input=f"\n{ops}\n\n".encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    with EtcdServer() as etcd:
        etcd.start()
        t0 = time.monotonic()
        load(etcd, args.peers)
        print(f"{args.peers} leases loaded in {time.monotonic() - t0:.1f} s")
        runs: dict[str, list[dict[str, tuple[float, int]]]] = {"grpc": [], "gateway": []}
        for rep in range(args.reps):
            for kind in (("grpc", "gateway") if rep % 2 == 0 else ("gateway", "grpc")):
                runs[kind].append(client(kind, etcd.endpoint))
    steps = list(runs["grpc"][0])
    print(f"\n{'step':>12} | {'gRPC (aetcd): RSS, threads':>28} | "
          f"{'vxnet over the JSON gateway: RSS, threads':>42} | difference")
    for step in steps:
        g = statistics.median(r[step][0] for r in runs["grpc"])
        h = statistics.median(r[step][0] for r in runs["gateway"])
        gt = max(r[step][1] for r in runs["grpc"])
        ht = max(r[step][1] for r in runs["gateway"])
        print(f"{step:>12} | {g:18.1f} MiB, {gt:2d} | {h:32.1f} MiB, {ht:2d} | {g - h:+.1f} MiB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        fn = _grpc if sys.argv[2] == "grpc" else _gateway
        print(json.dumps(fn(sys.argv[3])))
    else:
        sys.exit(main())
