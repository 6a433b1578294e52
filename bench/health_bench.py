"""What peer health probes cost an agent holding N peers: CPU and echo requests per second,
probes off against on, side by side in one run.

The N fake peers answer nothing (nothing holds their addresses), so every check spends its
retry and timeouts: the most a round can cost.

    sudo .venv/bin/python bench/health_bench.py --peers 5000 --intervals 0,60,10 --seconds 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vxnet.lab.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.agent_bench import CONFIG, cpu_seconds, in_ns, metric, reset_node


def measure(c: Cluster, node, interval: float, warmup: float, seconds: float
            ) -> tuple[float, float]:
    """(CPU % of one core, echo requests per second) of an agent probing every `interval`."""
    reset_node(node)
    proc = c.start_agent(node, "--health-interval", f"{interval:g}")
    try:
        c.wait_ready(node, 120)
        time.sleep(warmup)  # the schedule reaches its steady rate; start-up's CPU is not counted
        cpu0, sent0, t0 = cpu_seconds(proc.pid), metric(c, node, "vxnet_probes_sent_total"), \
            time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return ((cpu_seconds(proc.pid) - cpu0) / elapsed * 100,
                (metric(c, node, "vxnet_probes_sent_total") - sent0) / elapsed)
    finally:
        c.stop_agent(node)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=5000)
    ap.add_argument("--intervals", default="0,60,10", help="seconds per round; 0: probes off")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=15)
    args = ap.parse_args(argv)
    with Cluster("hb", config=CONFIG, agent_args=("--resync-interval", "30")) as c:
        c.start()
        node = c.add_node(1, start_agent=False)
        in_ns(c.lab.fabric.name, "_load", c.endpoint, str(args.peers))  # type: ignore[union-attr]
        rows = [(float(i), *measure(c, node, float(i), args.warmup, args.seconds))
                for i in args.intervals.split(",")]
    print(f"peer probes, {args.peers} peers that answer nothing, {args.seconds:g} s windows:")
    print(f"{'interval':>9} | {'CPU % of a core':>15} | {'echo requests/s':>15} | "
          "expected requests/s (2 paths x 2 tries per peer per round)")
    for interval, cpu, pps in rows:
        expected = f"{args.peers * 4 / interval:.0f}" if interval else "0"
        print(f"{(f'{interval:g} s' if interval else 'off'):>9} | {cpu:>15.2f} | {pps:>15.1f} | "
              f"{expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
