"""docs/install.md, followed step by step on lab namespaces standing in for three machines and
an etcd cluster (one TLS member with client certificates and authentication).

Every `<!-- step: NAME -->` block of the page runs as written, with only machine-specific values
mapped to the lab's: etcd's addresses, absolute paths (each "machine" gets its own /etc, /run),
host names (FLANNELD_NODE_NAME, as each machine's hostname), passwords. `systemctl` is played
the way systemd runs the installed unit: its Environment and EnvironmentFile, its ExecStart in
the node's namespace, and `start` returning on READY=1 (Type=notify)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.store.test_tls import issue, openssl
from tests.waiting import wait_for
from vxnet.lab.etcd import EtcdServer
from vxnet.lab.netns import Netns
from vxnet.lab.topology import UNDERLAY4, Lab, Node

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"
ETCD_DOC = "https://etcd-1.example:2379"


def steps() -> dict[str, str]:
    text = DOC.read_text()
    return {m[1]: m[2] for m in re.finditer(r"<!-- step: ([\w-]+) -->\n```sh\n(.*?)```", text,
                                            re.S)}


class Machines:
    """The lab standing in for etcd and three machines; `mapping` turns the page's values into
    this lab's."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.lab = Lab("inst")
        self.pki = tmp / "pki"
        self.etcd = self._etcd()
        self.nodes: list[Node] = []
        self.services: dict[int, subprocess.Popen[bytes]] = {}
        self.pods: list[str] = []

    def _etcd(self) -> EtcdServer:
        d = self.pki
        d.mkdir(parents=True)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj",
                "/CN=vxnet-install-ca", cwd=d)
        server = issue(d, "server", f"subjectAltName=IP:{UNDERLAY4[254]}\n"
                                    "extendedKeyUsage=serverAuth,clientAuth\n")
        admin = issue(d, "admin", "extendedKeyUsage=clientAuth\n")
        issue(d, "vxnet", "extendedKeyUsage=clientAuth\n")
        srv = EtcdServer(str(UNDERLAY4[254]), client_port=2379, peer_port=2380,
                         netns=self.lab.fabric.name, workdir=self.tmp / "etcd",
                         tls=(d / "ca.crt", *server))
        srv.client_tls = (d / "ca.crt", *admin)
        srv.start()
        # the cluster we are given already has authentication on, with a root user
        srv.ctl("user", "add", "root:root-pw")
        srv.ctl("auth", "enable")
        return srv

    def mapping(self, node: Node | None) -> dict[str, str]:
        m = {ETCD_DOC + ",https://etcd-2.example:2379,https://etcd-3.example:2379":
             self.etcd.endpoint, ETCD_DOC: self.etcd.endpoint,
             "/root/etcd/": f"{self.pki}/", "ROOT-PASSWORD": "root-pw",
             "VXNET-PASSWORD": "vxnet-pw"}
        if node is not None:
            mine = self.tmp / node.name
            m.update({"/opt/vxnet": f"{mine}/opt/vxnet", "/etc/systemd/system": f"{mine}/systemd",
                      "/etc/default/vxnet": f"{mine}/default-vxnet",
                      "/etc/vxnet": f"{mine}/etc-vxnet", "/etc/cni/net.d": f"{mine}/net.d",
                      "/run/flannel": f"{mine}/run-flannel",
                      "demo-pod": f"vx-inst-pod-{node.index}-{os.getpid()}"})
        return m

    def run(self, name: str, node: Node | None = None) -> str:
        """Step `name` on a machine (None: the admin's, next to etcd); its output."""
        mapping = self.mapping(node)
        script = steps()[name]
        for k in sorted(mapping, key=len, reverse=True):
            script = script.replace(k, mapping[k])
        out, chunk = [], []
        for line in [*script.splitlines(), None]:
            if line is None or line.startswith("systemctl "):
                if chunk:  # in the checkout; the certificates are copied from where they are
                    # installing needs the package registries, which only the host reaches (it
                    # changes files, no network settings); everything else runs on the node
                    out.append(self._bash("\n".join(chunk), node,
                                          self.pki if name == "node-config" else ROOT,
                                          in_ns=name != "node-install"))
                    chunk = []
                if line is not None:
                    self._systemctl(shlex.split(line)[1:], node)
            else:
                chunk.append(line)
        return "".join(out)

    def _bash(self, script: str, node: Node | None, cwd: Path, in_ns: bool) -> str:
        ns = node.ns if node is not None else self.lab.fabric
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
        if node is not None:  # each machine's own hostname, and its own /run (for defaults)
            env["FLANNELD_NODE_NAME"] = node.name
            env["FLANNELD_SUBNET_FILE"] = self.mapping(node)["/run/flannel"] + "/subnet.env"
        # nsenter, not `ip netns exec`: a namespace the step adds (`ip netns add`) must stay
        # visible outside it, which ip netns exec's private mount namespace would prevent
        where = ["nsenter", f"--net=/var/run/netns/{ns.name}"] if in_ns else []
        res = subprocess.run([*where, "bash", "-euo", "pipefail", "-c", script],
                             capture_output=True, text=True, env=env,
                             cwd=cwd, timeout=600)
        assert res.returncode == 0, f"{script}\n---\n{res.stdout}\n{res.stderr}"
        return res.stdout

    def _systemctl(self, args: list[str], node: Node | None) -> None:
        assert node is not None
        unit = Path(self.mapping(node)["/etc/systemd/system"]) / "vxnet.service"
        if args == ["daemon-reload"]:
            assert unit.exists()
        elif args == ["enable", "--now", "vxnet"]:
            self._start(node, unit)
        elif args == ["disable", "--now", "vxnet"]:
            proc = self.services.pop(node.index)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(15) == 0
        else:
            raise AssertionError(f"systemctl {args} is not played by this test")

    def _start(self, node: Node, unit: Path) -> None:
        """As systemd starts a Type=notify unit: returns once READY=1 comes."""
        mapping = self.mapping(node)
        text = unit.read_text()
        for k in sorted(mapping, key=len, reverse=True):
            text = text.replace(k, mapping[k])
        env = {"PATH": os.environ["PATH"], "FLANNELD_NODE_NAME": node.name}
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "Environment":
                name, _, setting = value.partition("=")
                env[name] = setting
            elif key == "EnvironmentFile":
                path = Path(value.lstrip("-"))
                if path.exists():
                    env.update(dict(x.split("=", 1) for x in path.read_text().splitlines()
                                    if x and not x.startswith("#")))
            elif key == "ExecStart":
                argv = shlex.split(value)
        where = Path(tempfile.mkdtemp(prefix="vxn-", dir="/tmp"))
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            srv.bind(str(where / "notify"))
            srv.settimeout(60)
            env["NOTIFY_SOCKET"] = str(where / "notify")
            log = open(self.tmp / f"{node.name}.log", "ab")  # noqa: SIM115 (the child owns it)
            self.services[node.index] = subprocess.Popen(
                ["ip", "netns", "exec", node.ns.name, *argv], env=env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            while "READY=1" not in srv.recv(4096).decode():
                pass
        finally:
            srv.close()
            for f in where.iterdir():
                f.unlink()
            where.rmdir()

    def close(self) -> None:
        for proc in self.services.values():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pod in self.pods:
            subprocess.run(["ip", "netns", "del", pod], capture_output=True)
        self.etcd.close()
        self.lab.close()


@pytest.fixture
def machines(tmp_path):
    m = Machines(tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_install_md_followed_step_by_step(machines):
    m = machines
    m.run("etcd-setup")
    nodes = [m.lab.add_node(i) for i in (1, 2, 3)]
    for n in nodes:  # real machines have a default route: the agent picks its interface
        n.ns.ip("route", "add", "default", "via", str(UNDERLAY4[254]))
    for n in nodes:
        m.run("node-install", n)
        m.run("node-config", n)
        m.run("node-start", n)
        assert (m.tmp / n.name / "run-flannel" / "subnet.env").exists()  # before READY=1
    for n in nodes:
        out = m.run("node-check", n)
        wait_for(lambda n=n: m.run("node-check", n).count("programmed") >= 2, 10,
                 f"{n.name} programs both peers")
        assert "ready" in out and "FLANNEL_SUBNET=10.244." in out and '"bridge"' in out
    pods = []
    for n in nodes[:2]:
        m.pods.append(m.mapping(n)["demo-pod"])
        result = json.loads(m.run("pod", n))
        pods.append((Netns(m.mapping(n)["demo-pod"]), result["ips"][0]["address"].split("/")[0]))
    (pod1, _), (_, ip2) = pods
    assert pod1.run("ping", "-c", "2", "-W", "2", ip2, check=False).returncode == 0
    for n in nodes:
        m.run("node-remove", n)
        assert not (m.tmp / n.name / "run-flannel" / "subnet.env").exists()
        assert "flannel.1" not in n.ns.ip("link").stdout
        assert not (m.tmp / n.name / "opt" / "vxnet").exists()
    assert m.etcd.ctl("--user", "root:root-pw", "get", "--prefix",
                      "/coreos.com/network/subnets/").stdout == b""
