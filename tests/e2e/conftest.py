"""End-to-end: a lab cluster per test (real etcd, real kernel, real `vxnet agent` processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.waiting import SOON, wait_for
from vxnet.lab.cluster import Cluster

# The lab's network, with agents drawing their subnets from 10.244.1-99 only: leases a test
# writes itself (a flanneld peer, garbage, impossible or fake peers) sit at 10.244.200 and up,
# where no agent can have drawn the same subnet (with the whole /16 to draw from, one run in
# about 16 collided).
LAB_CONFIG = {"Network": "10.244.0.0/16", "SubnetMax": "10.244.99.0", "Backend": {"Type": "vxlan"}}


@pytest.fixture
def cluster(request, tmp_path):
    if not shutil.which("etcd"):
        pytest.skip("needs Debian's etcd-server (run `make test`)")
    with Cluster("e2e", config=LAB_CONFIG, workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5")) as c:  # closed even if start fails
        yield c.start()


@pytest.fixture
def kube(tmp_path):
    """The same lab in kube mode: the API-server simulator instead of etcd."""
    with Cluster("kube", store="kube", workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5")) as c:
        yield c.start()


def unmount_under(*roots: Path) -> None:
    """Lazily unmount whatever a runtime left mounted below these directories, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mp in sorted((m for m in mounts if m.startswith(tuple(str(r) for r in roots))),
                     reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def start(cluster, n: int, pods: bool = False) -> list:
    """Nodes 1..n with their agents ready (and a CNI pod each, with pods)."""
    nodes = [cluster.add_node(i) for i in range(1, n + 1)]
    for node in nodes:
        cluster.wait_ready(node)
    if pods:
        for node in nodes:
            cluster.add_cni_pod(node)
    return nodes


def state(cluster, node) -> dict:
    return json.loads(cluster.api(node, "/v1/state")[1])


def ipam(cluster, node) -> dict:
    return json.loads(cluster.api(node, "/v1/ipam")[1])


def readyz(cluster, node) -> str:
    """What /readyz says ("" while nothing answers yet)."""
    try:
        return cluster.api(node, "/readyz")[1]
    except OSError:
        return ""


def metric(cluster, node, name: str) -> float:
    for line in cluster.api(node, "/metrics")[1].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def ping(pod, dst, *args: str):
    return pod.ns.run("ping", "-c", "1", "-W", "2", *args, str(dst), check=False, timeout=120)


def talking(a, b) -> None:
    """Until pod a's ping reaches pod b: both agents ready does not mean each has programmed the
    other yet (the watch brings the later lease a moment after), and a test that counts lost
    packets starts counting only once they have."""
    wait_for(lambda: ping(a, b.ip).returncode == 0, SOON, f"{a.ns.name} reaching {b.ip}")


def routes(node) -> str:
    return node.ns.ip("route", "show", "proto", "118").stdout
