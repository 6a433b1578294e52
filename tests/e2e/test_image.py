"""Issue 22: the agent image (`make image`, deploy/Containerfile) run as the DaemonSet runs it.

Three lab nodes, each agent a container of the image started by podman inside the node's
network namespace: host network, only the capabilities NET_ADMIN and NET_RAW, /run/flannel and
the CNI config directory mounted from the "host" (a directory per node), `vxnet agent` with the
lab's flags plus the DaemonSet's --ip-masq and --cni-conf-file. Pods are wired by Debian's
standard bridge plugin from the conflist the agent wrote, as a runtime would; they ping each
other across nodes, and stopping and starting one agent's container loses no ping. The
container's log is the agent's.

The image is built once per session by deploy/build-image.sh (what `make image` runs; a second
run with unchanged sources only checks) into the machine's podman storage; each test copies it
(podman save | load) into its own storage under tmp_path, so nothing a test makes outlives it."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import LAB_CONFIG, unmount_under
from tests.waiting import SOON, wait_for
from vxnet.kernel.allowlist import TABLE as ALLOWLIST_TABLE
from vxnet.kernel.forward import JUMP as FORWARD_JUMP
from vxnet.kernel.masq import TABLE as MASQ_TABLE
from vxnet.lab.cluster import API_PORT, Cluster, http_get, run_cni
from vxnet.lab.topology import Node, Pod

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
# what podman needs on these machines: runc (crun refuses the hybrid cgroup layout), cgroupfs,
# and the machine's hard limits
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
CONFLIST = "10-vxnet.conflist"


def podman_unusable() -> str | None:
    """Why podman cannot run containers on this machine at all (None: it can)."""
    if not shutil.which("podman") or not shutil.which("runc"):
        return "needs podman and runc (run `make test`, which installs them)"
    res = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, timeout=120)
    if res.returncode:
        return f"podman cannot run here: {res.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def image() -> str:
    """The agent image of this tree, built (or found up to date) by deploy/build-image.sh."""
    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    res = subprocess.run([str(ROOT / "deploy" / "build-image.sh")], capture_output=True,
                         text=True, timeout=1500)
    if res.returncode:
        pytest.fail(f"deploy/build-image.sh failed:\n{res.stderr[-4000:]}")
    return res.stdout.strip().splitlines()[-1]


class Podman:
    """podman with its storage under `root`, run inside a node's network namespace when asked
    (nsenter, not `ip netns exec`, which remounts /sys and hides the cgroup mounts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.runroot = Path(tempfile.mkdtemp(prefix="vxim-", dir="/tmp"))  # sockets: keep short
        self.argv = [*PODMAN, "--root", str(root / "storage"), "--runroot", str(self.runroot),
                     "--tmpdir", str(root / "tmp"), "--events-backend", "file"]

    def __call__(self, *args: str, node: Node | None = None, check: bool = True,
                 timeout: float = 120, stdin: int | None = None
                 ) -> subprocess.CompletedProcess[str]:
        enter = ["nsenter", f"--net=/var/run/netns/{node.ns.name}"] if node else []
        res = subprocess.run([*enter, *self.argv, *args], capture_output=True, text=True,
                             timeout=timeout, stdin=stdin)
        if check and res.returncode:
            raise AssertionError(f"podman {' '.join(args[:2])}: {res.stderr[-2000:]}")
        return res

    def load(self, image: str) -> None:
        """Copy `image` from the machine's storage into this one."""
        save = subprocess.Popen([*PODMAN, "save", image], stdout=subprocess.PIPE)
        try:
            assert save.stdout is not None
            self("load", "--quiet", stdin=save.stdout.fileno())
        finally:
            save.stdout.close()  # type: ignore[union-attr]
            assert save.wait(120) == 0, "podman save failed"

    def close(self) -> None:
        self("rm", "--force", "--all", "--time", "0", check=False)
        self("rmi", "--all", "--force", check=False)
        unmount_under(self.root, self.runroot)
        shutil.rmtree(self.runroot, ignore_errors=True)


class Agent:
    """The agent container of one node, run as the DaemonSet runs it."""

    def __init__(self, pm: Podman, c: Cluster, node: Node, image: str, host: Path) -> None:
        self.pm, self.node, self.name = pm, node, f"vxnet-{node.name}"
        self.run_dir, self.net_d = host / "run-flannel", host / "net.d"  # the node's hostPaths
        self.ipam = host / "cni"  # host-local's state (the plugins run on the host)
        for d in (self.run_dir, self.net_d):
            d.mkdir(parents=True)
        pm("run", "--detach", "--name", self.name, "--network", "host", *LIMITS,
           "--cap-drop", "all", "--cap-add", "NET_ADMIN,NET_RAW", "--log-driver", "k8s-file",
           "--volume", f"{self.run_dir}:/run/flannel", "--volume", f"{self.net_d}:/etc/cni/net.d",
           image, "agent", "--etcd-endpoints", c.endpoint, "--iface", "eth0",
           "--node-name", node.name, "--healthz-port", str(API_PORT), "--ip-masq",
           "--cni-conf-file", f"/etc/cni/net.d/{CONFLIST}", "--cni-data-dir", str(self.ipam),
           node=node)

    def logs(self) -> str:
        res = self.pm("logs", self.name, check=False)
        return res.stdout + res.stderr

    def state(self) -> dict:
        return json.loads(self.pm("inspect", "--format", "{{json .State}}", self.name).stdout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state()["Running"]:
                raise AssertionError(f"{self.name} exited:\n{self.logs()[-3000:]}")
            try:
                if http_get(self.node.ns.name, API_PORT, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)  # the poll interval; the deadline above bounds it
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.logs()[-3000:]}")

    def subnet(self) -> str:
        env = (self.run_dir / "subnet.env").read_text()
        return re.search(r"^FLANNEL_SUBNET=(\S+)$", env, re.M).group(1)  # type: ignore[union-attr]


def add_pod(c: Cluster, agent: Agent) -> Pod:
    """A pod wired by Debian's bridge plugin from the conflist the agent wrote: the conflist's
    first plugin with the list's cniVersion and name, as a runtime hands it over."""
    assert c.lab is not None
    conflist = json.loads((agent.net_d / CONFLIST).read_text())
    conf = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"],
            "name": conflist["name"]}
    ns = c.lab.new_ns(f"q{agent.node.index}")
    res = run_cni(agent.node.ns.name, "ADD", ns.name, json.dumps(conf).encode(),
                  plugin=Path("/usr/lib/cni/bridge"))
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    addr = ipaddress.ip_interface(json.loads(res.stdout)["ips"][0]["address"]).ip
    pod = Pod(ns, addr, None)  # type: ignore[arg-type]
    agent.node.pods.append(pod)
    return pod


class RingPing:
    """ping(8) every 10 ms from each pod to the next node's pod, counted when stopped."""

    def __init__(self, pods: list[Pod]) -> None:
        self.procs = [subprocess.Popen(
            ["ip", "netns", "exec", a.ns.name, "ping", "-n", "-q", "-i", "0.01", "-W", "1",
             str(b.ip)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for a, b in zip(pods, pods[1:] + pods[:1], strict=True)]

    def stop(self) -> list[tuple[int, int]]:
        counts = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            out = p.communicate(timeout=30)[0]
            m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
            counts.append((int(m.group(1)), int(m.group(2))) if m else (0, 0))
        return counts


@pytest.mark.timeout(1500)  # a cold first build (base + dependencies) comes first
def test_the_image_runs_the_agent_as_the_daemonset_does(image, tmp_path):
    if not shutil.which("etcd"):
        pytest.skip("needs Debian's etcd-server (run `make test`)")
    version = subprocess.run([*PODMAN, "run", "--rm", *LIMITS, image, "--version"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(r"vxnet, version \d+\.\d+\.\d+(\+g[0-9a-f]{12}(\.dirty)?)?", version)
    with Cluster("img", config=LAB_CONFIG, workdir=tmp_path / "lab") as c:
        c.start()
        pm = Podman(tmp_path / "podman")
        ring = None
        try:
            pm.load(image)
            agents = [Agent(pm, c, c.add_node(i, start_agent=False), image,
                            tmp_path / f"host{i}") for i in (1, 2, 3)]
            for a in agents:
                a.wait_ready()
            caps = pm("inspect", "--format", "{{json .EffectiveCaps}}", agents[0].name).stdout
            assert sorted(json.loads(caps)) == ["CAP_NET_ADMIN", "CAP_NET_RAW"], caps
            for a in agents:  # nft in the image wrote the allow-list and the masquerade rules
                tables = a.node.ns.run("nft", "list", "tables").stdout
                assert f"inet {ALLOWLIST_TABLE}" in tables and f"ip {MASQ_TABLE}" in tables

            def forward_rules(node: Node) -> bool:  # and its iptables the FORWARD accept rules
                return node.ns.run("iptables", "-C", *FORWARD_JUMP, check=False).returncode == 0
            for a in agents:
                wait_for(lambda a=a: forward_rules(a.node), SOON, f"FORWARD rules on {a.node.name}")
            subnets = [a.subnet() for a in agents]
            assert len(set(subnets)) == 3, subnets
            pods = [add_pod(c, a) for a in agents]
            for a, pod in zip(agents, pods, strict=True):  # on its node's vxnet subnet
                assert pod.ip is not None
                prefix = a.subnet().rsplit(".", 1)[0] + "."
                assert str(pod.ip).startswith(prefix), (pod.ip, a.subnet())
                assert (a.ipam / "ipam" / "vxnet" / str(pod.ip)).exists()  # its data dir
            for a, b in zip(pods, pods[1:] + pods[:1], strict=True):
                wait_for(lambda a=a, b=b: a.ns.run("ping", "-c", "1", "-W", "1", str(b.ip),
                                                    check=False).returncode == 0,
                         30, f"{a.ns.name} reaching {b.ip}")

            ring = RingPing(pods)
            time.sleep(2)  # traffic before the restart: the window is what is tested
            restarted = agents[1]
            pm("stop", restarted.name, node=restarted.node)
            stopped = restarted.state()
            assert not stopped["Running"] and stopped["ExitCode"] == 0, stopped  # SIGTERM
            time.sleep(2)  # a node without its agent: its pods keep talking
            pm("start", restarted.name, node=restarted.node)
            restarted.wait_ready()
            time.sleep(2)  # and traffic after it
            counts, ring = ring.stop(), None
            print(f"\n{version}; pings (sent, received) across the restart: {counts}")
            assert all(sent == got and sent > 300 for sent, got in counts), counts

            log = restarted.logs()  # the agent's log, both runs of it
            assert log.count("; ready") == 2, log[-3000:]
            assert re.search(r"INFO vxnet\.\S+: acquired new lease", log), log[-3000:]
            assert re.search(r"INFO vxnet\.\S+: reusing lease .*untouched", log), log[-3000:]
            assert restarted.subnet() == subnets[1]
            for a in agents:  # those two capabilities were enough for all it does
                assert not re.search(r"(?i)not permitted|permission", a.logs()), a.logs()
        finally:
            if ring is not None:
                ring.stop()
            pm.close()  # the containers go before their nodes' namespaces do
