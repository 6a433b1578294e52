"""Two builds of the agent side by side, alternated run by run in one lab, so that the
machine's drift (kernel workers freeing a namespace just torn down, a neighbour's build) falls
on both alike: start -> ready, the first sync, and memory, at N peers in etcd.

    sudo .venv/bin/python bench/ab_bench.py --peers 5000 --reps 3 \\
        --agent before=/tmp/vxnet-before/.venv/bin/python --agent after=.venv/bin/python

Each `--agent NAME=PYTHON` is an interpreter that has its build of vxnet installed (a venv of
another checkout, say). Use it before and after a restructuring: running one build's
agent_bench after the other's puts the second into the first one's teardown.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_bench import CONFIG, compile_agent, in_ns, metric, start_timed
from vxnet.lab.cluster import Cluster


def memory(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) / 1024
    return out


def run(c: Cluster, node, python: str) -> tuple[float, float, float, float]:
    """(seconds to ready, first sync seconds, peak RSS MiB, RSS MiB 3 s after ready)."""
    c.vxnet = (python, "-m", "vxnet")
    proc, ready = start_timed(c, node)
    first = metric(c, node, 'vxnet_resync_duration_seconds_sum{family="ipv4",kind="first"}')
    time.sleep(3)  # the probes' first round and the first scrapes, as in the field
    mem = memory(proc.pid)
    c.stop_agent(node, signal.SIGTERM)
    return ready, first, mem["VmHWM"], mem["VmRSS"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--agent", action="append", required=True, metavar="NAME=PYTHON")
    ap.add_argument("--agent-arg", action="append", default=[])
    args = ap.parse_args()
    agents = dict(a.split("=", 1) for a in args.agent)
    for python in agents.values():
        compile_agent(python)
    got: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in agents}
    with Cluster("ab", config=CONFIG, agent_args=tuple(args.agent_arg)) as c:
        c.start()
        node = c.add_node(1, start_agent=False)
        in_ns(c.lab.fabric.name, "_load", c.endpoint, str(args.peers),  # type: ignore[union-attr]
              script=str(Path(__file__).with_name("agent_bench.py")))
        for rep in range(args.reps):
            order = list(agents.items())
            for name, python in order if rep % 2 == 0 else order[::-1]:
                got[name].append(run(c, node, python))
    print(f"{args.peers} peers, {args.reps} runs each, alternated (medians; range)")
    print(f"{'agent':>10} | {'start -> ready':>22} | {'first sync':>22} | {'peak RSS':>9} | "
          f"{'RSS after':>9}")
    for name, runs in got.items():
        ready, first, hwm, rss = zip(*runs, strict=True)
        print(f"{name:>10} | {statistics.median(ready) * 1000:7.0f} ms "
              f"({min(ready) * 1000:.0f}-{max(ready) * 1000:.0f}) | "
              f"{statistics.median(first) * 1000:7.0f} ms "
              f"({min(first) * 1000:.0f}-{max(first) * 1000:.0f}) | "
              f"{statistics.median(hwm):5.0f} MiB | {statistics.median(rss):5.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
