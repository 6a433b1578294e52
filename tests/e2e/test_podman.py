"""Issue 13: a real container runtime. Debian's podman (CNI backend) starts containers on two
lab nodes through (a) vxnet-cni and (b) the conflist the agent writes itself; containers on
different nodes reach each other, and `podman rm` gives the address and the veth back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import unmount_under
from tests.e2e.test_docker import BUSYBOX
from vxnet.lab.cluster import Cluster

pytestmark = [pytest.mark.netns, pytest.mark.skipif(
    not shutil.which("podman") or not shutil.which("runc") or not os.path.exists(BUSYBOX),
    reason="needs Debian's podman, runc and busybox-static (run `make test`)")]


class Podman:
    """podman inside a node's namespace (nsenter, not `ip netns exec`, which hides the cgroup
    mounts), runc with cgroupfs, and its storage, state and network config all under `root`."""

    def __init__(self, node, root: Path, net_d: Path, plugin_dirs: list[str]) -> None:
        self.node, self.root = node, root
        root.mkdir(parents=True, exist_ok=True)
        self.runroot = Path(tempfile.mkdtemp(prefix="vxpm-", dir="/tmp"))  # at most 50 chars
        conf = root / "containers.conf"
        conf.write_text("[network]\nnetwork_backend = \"cni\"\n"
                        f"network_config_dir = \"{net_d}\"\n"
                        f"cni_plugin_dirs = {json.dumps(plugin_dirs)}\n"
                        "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n"
                        "runtime = \"runc\"\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.rootfs = root / "rootfs"
        (self.rootfs / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, self.rootfs / "bin" / "busybox")
        for app in ("sh", "ping", "sleep"):
            (self.rootfs / "bin" / app).symlink_to("busybox")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{self.node.ns.name}", "podman", "--root",
             str(self.root / "storage"), "--runroot", str(self.runroot), "--tmpdir",
             str(self.root / "tmp"), *args], capture_output=True, text=True, env=self.env,
            timeout=120)
        if check and res.returncode:
            raise AssertionError(f"podman {' '.join(args[:2])}: {res.stderr[-2000:]}")
        return res

    def run(self, name: str) -> str:
        """A container on the vxnet network; its address."""
        self("run", "-d", "--name", name, "--network", "vxnet", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024", "--rootfs", str(self.rootfs), "/bin/sleep", "600")
        return self("inspect", "-f", "{{.NetworkSettings.Networks.vxnet.IPAddress}}", name
                    ).stdout.strip()

    def close(self) -> None:
        self("rm", "-f", "-a", "-t", "0", check=False)
        unmount_under(self.root, self.runroot)
        shutil.rmtree(self.runroot, ignore_errors=True)


def addresses_held(ipam_dir: Path) -> list[str]:
    """Addresses host-local has handed out (one file per address)."""
    return [p.name for p in ipam_dir.rglob("*") if p.name[0].isdigit() and ":" not in p.name
            and not p.name.startswith("last_reserved")] if ipam_dir.exists() else []


@pytest.mark.parametrize("variant", ["vxnet-cni", "agent-conflist"])
def test_podman_containers_on_two_nodes_talk_over_vxnet(tmp_path, variant):
    with Cluster("pdm", workdir=tmp_path / "lab") as c:
        c.start()
        runtimes: list[Podman] = []
        try:
            ips, ipam_dirs = [], []
            for i in (1, 2):
                n = c.add_node(i, start_agent=False)
                where = tmp_path / n.name
                net_d, data = where / "net.d", where / "cni"
                if variant == "agent-conflist":  # the node needs only the standard plugins
                    c.start_agent(n, "--cni-conf-file", str(net_d / "10-vxnet.conflist"),
                                  "--cni-data-dir", str(data))
                    dirs = ["/usr/lib/cni"]
                else:
                    c.start_agent(n)
                    net_d.mkdir(parents=True)
                    (net_d / "10-vxnet.conflist").write_text(json.dumps({
                        "cniVersion": "1.0.0", "name": "vxnet", "plugins": [{
                            "type": "vxnet-cni", "subnetFile": str(c.subnet_env(n)),
                            "dataDir": str(data)}]}))
                    dirs = [str(Path(sys.executable).parent), "/usr/lib/cni"]
                c.wait_ready(n)
                pm = Podman(n, where / "podman", net_d, dirs)
                runtimes.append(pm)
                ip = pm.run("c1")
                subnet = c.subnet_env(n).read_text().split("FLANNEL_SUBNET=")[1].split(".1/")[0]
                assert ip.startswith(subnet + "."), (ip, subnet)  # the node's vxnet subnet
                assert addresses_held(data / "ipam") == [ip]
                ips.append(ip)
                ipam_dirs.append(data / "ipam")
            for pm, other in ((runtimes[0], ips[1]), (runtimes[1], ips[0])):
                r = pm("exec", "c1", "ping", "-c", "2", "-W", "2", other, check=False)
                assert r.returncode == 0, r.stdout + r.stderr
            for pm, ipam_dir in zip(runtimes, ipam_dirs, strict=True):
                pm("rm", "-f", "-t", "0", "c1")
                assert addresses_held(ipam_dir) == []
                assert "veth" not in pm.node.ns.ip("link").stdout
        finally:
            for pm in runtimes:
                pm.close()
