"""`vxnet demo`: a 3-node cluster in namespaces, pods wired by the CNI plugin, every pod pinging
every other, a readable summary, and a teardown that runs whatever happens (Ctrl-C included)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

from vxnet.lab.cluster import Cluster
from vxnet.lab.topology import Node, Pod
from vxnet.textui import table

Say = Callable[[str], None]
REQUIRED = ("ip", "bridge", "etcd", "etcdctl", "ping", "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local")


def preflight(store: str = "etcd") -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("the demo builds network namespaces: run it as root")
    for tool in REQUIRED + (("openssl",) if store == "kube" else ()):
        if not (shutil.which(tool) or os.path.exists(tool)):
            problems.append(f"{tool} is missing (`make demo` installs it)")
    return problems


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(nodes: int = 3, pods_per_node: int = 2, say: Say = print, store: str = "etcd"
             ) -> bool:
    problems = preflight(store)
    if problems:
        for p in problems:
            say(f"cannot run the demo: {p}")
        return False
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears down like Ctrl-C does
    cluster = Cluster("demo", store=store)
    try:
        return _demo(cluster, nodes, pods_per_node, say)
    except KeyboardInterrupt:
        say("\ninterrupted")
        return False
    finally:
        say(f"tearing down: stopping agents and {'the API server' if store == 'kube' else 'etcd'}"
            ", deleting namespaces ...")
        cluster.close()
        say("done: nothing left behind.")


def _demo(cluster: Cluster, n_nodes: int, pods_per_node: int, say: Say) -> bool:
    say(f"vxnet demo: {n_nodes} nodes, {pods_per_node} pods each, all in network namespaces\n")
    say("[1/5] fabric: a bridge as the underlay switch, " + (
        "a Kubernetes API server (the lab's simulator) on 198.51.100.254:6443, agents in kube "
        "mode" if cluster.store == "kube" else "etcd on 198.51.100.254:2379"))
    cluster.start()
    say("[2/5] nodes: one namespace each, `vxnet agent` running inside")
    t0 = time.monotonic()
    nodes = [cluster.add_node(i) for i in range(1, n_nodes + 1)]
    ready_at: dict[int, float] = {}
    for node in nodes:
        cluster.wait_ready(node)
        ready_at[node.index] = time.monotonic() - t0
        say(f"      {node.name} ({node.ip}) ready after {ready_at[node.index]:.2f}s")
    infos = {n.index: json.loads(cluster.api(n, "/v1/ipam")[1]) for n in nodes}
    say("[3/5] pods: wired by vxnet-cni (bridge cni0 + host-local), as a runtime would")
    pods: list[tuple[str, Node, Pod]] = []
    for node in nodes:
        for k in range(1, pods_per_node + 1):
            pod = cluster.add_cni_pod(node)
            pods.append((f"{node.name}-pod{k}", node, pod))
            say(f"      {node.name}-pod{k}: {pod.ip}")
    say(f"[4/5] reachability: every pod pings every other pod ({len(pods) * (len(pods) - 1)} "
        "pairs)")
    ok = _matrix(pods, say)
    converged = time.monotonic() - t0
    say("\n[5/5] summary\n")
    say(table(["node", "node ID", "underlay IP", "pod subnet", "VTEP MAC", "MTU", "ready"],
               [[n.name, str(infos[n.index]["nodeId"] or "-"), str(n.ip),
                 infos[n.index]["podSubnetThisNode"], infos[n.index]["vtepMAC"],
                 str(infos[n.index]["mtu"]), f"{ready_at[n.index]:.2f}s"] for n in nodes]))
    state = json.loads(cluster.api(nodes[0], "/v1/state")[1])["overlays"]["ipv4"]
    say(f"\n{nodes[0].name} holds {len(state['peers'])} peers, all programmed: "
        f"{all(p['programmed'] for p in state['peers'].values())}; drift: "
        f"{state['drift'] or 'none'}")
    say(f"time to converge (agents started -> every pod reaches every pod): {converged:.2f}s")
    say("\nRESULT: " + ("every pod reaches every other pod" if ok else "SOME PODS CANNOT TALK"))
    return ok


def _matrix(pods: list[tuple[str, Node, Pod]], say: Say) -> bool:
    def probe(src: Pod, dst: Pod) -> bool:
        return src.ns.run("ping", "-c", "1", "-W", "2", str(dst.ip),
                          check=False).returncode == 0

    pairs = [(a, b) for a in pods for b in pods if a is not b]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results: dict[tuple[str, str], bool] = dict(zip(
            [(a[0], b[0]) for a, b in pairs],
            pool.map(lambda ab: probe(ab[0][2], ab[1][2]), pairs), strict=True))
    names = [p[0] for p in pods]
    rows: list[list[Any]] = [[src] + ["-" if src == dst else ("ok" if results[(src, dst)]
                                                              else "FAIL") for dst in names]
                             for src in names]
    say(table(["from \\ to", *names], rows))
    return all(results.values())
