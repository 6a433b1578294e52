"""What one peer costs the agent, per structure it lives in (tracemalloc): the peers made from
the leases (with what the lease watch keeps per key: a fingerprint, the decoded lease living on
only as its peer), the data plane's admission and kernel tables
after a sync into a real VXLAN device, the probe targets and the allow-list's addresses. The
peers look like a real cluster's: one public IP each.

    sudo .venv/bin/python bench/peer_memory.py --peers 20000
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import itertools
import json
import socket
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.kernel_bench import LOCAL, NETWORK, fresh_node
from vxnet.agent.peers import HealthTargets, peers_of
from vxnet.kernel import netlink as nl
from vxnet.kernel.dataplane import Dataplane, PlaneSpec
from vxnet.kernel.mac import vtep_mac
from vxnet.store.lease import decode_lease


def lease_values(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(1, n + 1):
        sub = ipaddress.ip_network(f"10.{i >> 8}.{i & 255}.0/24")
        ip = ipaddress.ip_address("100.64.0.0") + i  # one public IP per node
        out.append((f"{sub.network_address}-24", json.dumps(
            {"PublicIP": str(ip), "PublicIPv6": None, "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": vtep_mac(sub)}}).encode()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=20000)
    ap.add_argument("--top", type=int, default=6, help="allocation sites shown per step")
    args = ap.parse_args(argv)
    n = args.peers
    values = lease_values(n)
    ns, ifindex = fresh_node()
    try:
        with ns.entered():
            sock = nl.RtnlSocket()
        tracemalloc.start()
        steps: list[tuple[str, tracemalloc.Snapshot]] = [("", tracemalloc.take_snapshot())]

        def step(name: str) -> None:
            gc.collect()
            steps.append((name, tracemalloc.take_snapshot()))

        leases = {k: decode_lease(k, v, 7 << 40, 1 << 20) for k, v in values}
        plane = Dataplane(sock, PlaneSpec(socket.AF_INET, ifindex, 4, LOCAL, NETWORK))
        plane.set_peers(peers_of(leases, 4, "10.0.0.0-24"))
        watch = {k: lease.fingerprint() for k, lease in leases.items()}
        del leases
        step("peers admitted (each Peer, what it shares with its lease, admission's indexes) "
             "and the lease watch's fingerprints")
        result = plane.resync()
        assert not result.failures, result.failures
        plane.resync()  # the periodic one: the caches as they stay
        step("kernel tables after the sync (desired + in the kernel)")
        ov = SimpleNamespace(plane=plane, device=SimpleNamespace(mtu=1450, port=8472))
        targets = HealthTargets({4: ov}, None)  # type: ignore[arg-type]
        assert len(targets().targets) == n
        step("probe targets")
        ips = frozenset(plane.admission.ips)
        step("allow-list addresses (the set it compares)")
        print(f"{n} peers: bytes per peer, by structure (tracemalloc, after gc)\n")
        total = 0.0
        for (_, before), (name, after) in itertools.pairwise(steps):
            diff = after.compare_to(before, "lineno")
            size = sum(d.size_diff for d in diff) / n
            total += size
            print(f"{size:7.0f} B  {name}")
            for d in diff[:args.top]:
                if d.size_diff / n >= 8:
                    frame = d.traceback[0]
                    print(f"          {d.size_diff / n:5.0f} B  {d.count_diff / n:4.1f} objects"
                          f"  {Path(frame.filename).name}:{frame.lineno}")
        print(f"{total:7.0f} B  in all ({total * n / 2**20:.1f} MiB at {n} peers)")
        del ips, targets, watch
        sock.close()
    finally:
        ns.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
