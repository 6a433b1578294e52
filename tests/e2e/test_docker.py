"""Issue 12, part 3: Debian's dockerd in two lab nodes, started with the options
`vxnet docker-opts` wrote; containers on different nodes reach each other over vxnet."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.waiting import wait_for
from vxnet.lab.cluster import Cluster

pytestmark = pytest.mark.netns
BUSYBOX = "/bin/busybox"


class Dockerd:
    """One dockerd inside a node's namespace, with everything of its own under `root`."""

    def __init__(self, node, root: Path, opts: str) -> None:
        self.root, self.sock = root, f"unix://{root}/docker.sock"
        root.mkdir(parents=True, exist_ok=True)
        log = open(root / "dockerd.log", "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{node.ns.name}", "dockerd",
             "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "dockerd.pid"), "-H", self.sock, "--storage-driver",
             "vfs", *opts.split()], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        self.name = node.name

    def wait_ready(self) -> None:
        wait_for(lambda: self.docker("info", check=False).returncode == 0, 60,
                 f"dockerd in {self.name}")

    def docker(self, *args: str, check: bool = True, input: bytes | None = None
               ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["docker", "-H", self.sock, *args], capture_output=True,
                              check=check, input=input, timeout=120)

    def stop(self) -> None:
        self.docker("rm", "-f", "c1", check=False)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # dockerd bind-mounts its data root onto itself; one that died early leaves it behind
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mp in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)


def busybox_image(tmp: Path) -> bytes:
    """A tarball of a busybox-static tree: no registry is reachable here."""
    rootfs = tmp / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for app in ("sh", "ping", "sleep", "ip"):
        (rootfs / "bin" / app).symlink_to("busybox")
    return subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                          check=True).stdout


@pytest.mark.skipif(not shutil.which("dockerd") or not os.path.exists(BUSYBOX),
                    reason="needs Debian's docker.io and busybox-static (run `make test`)")
def test_containers_of_dockerd_on_two_nodes_talk_over_vxnet(tmp_path):
    with Cluster("dock", workdir=tmp_path / "lab") as c:
        c.start()
        nodes = [c.add_node(i) for i in (1, 2)]
        daemons: list[Dockerd] = []
        # dockerd's own containerd puts sockets under --exec-root: keep it short (108 bytes)
        short = Path(tempfile.mkdtemp(prefix="vxd-", dir="/tmp"))
        try:
            image = busybox_image(tmp_path)
            ips = []
            for n in nodes:
                c.wait_ready(n)
                env = tmp_path / f"{n.name}-docker.env"
                subprocess.run([sys.executable, "-m", "vxnet", "docker-opts", "--subnet-file",
                                str(c.subnet_env(n)), "--output", str(env)], check=True)
                opts = next(line.split("=", 1)[1].strip('"') for line in
                            env.read_text().splitlines() if line.startswith("DOCKER_OPTS="))
                d = Dockerd(n, short / n.name, opts)
                daemons.append(d)  # stopped in `finally`, even if it never gets ready
                d.wait_ready()
                d.docker("import", "-", "vxbusybox", input=image)
                d.docker("run", "-d", "--name", "c1", "--ulimit", "nofile=1024:1024",
                         "--ulimit", "nproc=1024:1024", "vxbusybox", "/bin/sleep", "600")
                ip = d.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "c1"
                              ).stdout.decode().strip()
                subnet = c.subnet_env(n).read_text().split("FLANNEL_SUBNET=")[1].split(".1/")[0]
                assert ip.startswith(subnet + "."), (ip, subnet)  # on the node's vxnet subnet
                ips.append(ip)
            for d, other in ((daemons[0], ips[1]), (daemons[1], ips[0])):
                r = d.docker("exec", "c1", "ping", "-c", "2", "-W", "2", other, check=False)
                assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        finally:
            for d in daemons:
                d.stop()
            shutil.rmtree(short, ignore_errors=True)
