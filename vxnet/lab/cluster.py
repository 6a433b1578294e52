"""A lab cluster: etcd on the fabric, `vxnet agent` processes in node namespaces (logs to files),
pods on the nodes. Shared by the end-to-end tests and `vxnet demo`; close() leaves nothing."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vxnet.ip import of_family
from vxnet.lab.etcd import EtcdCluster, EtcdServer
from vxnet.lab.kubeapi import KubeApiServer
from vxnet.lab.topology import UNDERLAY4, Lab, Node, Pod
from vxnet.nsenter import entered
from vxnet.store.config import parse_config
from vxnet.store.subnetenv import SubnetEnv

API_PORT = 10280
KUBE_PORT = 6443
DEFAULT_CONFIG = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
PREFIX = "/coreos.com/network"


def http_get(netns: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path as seen from inside a namespace."""
    with entered(f"/run/netns/{netns}"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.connect()  # the socket is made, and stays, in the namespace
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def teardown_saved(path: Path) -> list[str]:
    """Undo a `vxnet lab up` from its state file: stop its processes, delete its namespaces."""
    state = json.loads(path.read_text())
    done = []
    for pid in state["pids"]:
        try:
            os.killpg(pid, signal.SIGKILL)  # each was started as its own process group
            done.append(f"stopped process group {pid}")
        except ProcessLookupError:
            pass
    for name in state["namespaces"].values():
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        done.append(f"deleted namespace {name}")
    shutil.rmtree(state["workdir"], ignore_errors=True)
    path.unlink()
    return done


def run_cni(netns: str, command: str, pod_ns: str, stdin: bytes, plugin: Path | None = None,
            **env: str) -> subprocess.CompletedProcess[bytes]:
    """A CNI plugin (vxnet-cni unless told) called in a node's namespace as a runtime does."""
    plugin = plugin or Path(sys.executable).parent / "vxnet-cni"
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command, "CNI_CONTAINERID": pod_ns,
            "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{plugin.parent}:/usr/lib/cni", **env}
    full = {k: v for k, v in full.items() if v is not None and v != "<unset>"}
    return subprocess.run(["ip", "netns", "exec", netns, str(plugin)], input=stdin, env=full,
                          capture_output=True, timeout=60)


class Cluster:
    def __init__(self, stem: str = "lab", *, config: dict[str, Any] | None = None,
                 workdir: str | Path | None = None, agent_args: tuple[str, ...] = (),
                 etcd_members: int = 1, etcd_args: tuple[str, ...] = (), segments: int = 1,
                 store: str = "etcd",
                 vxnet: tuple[str, ...] = (sys.executable, "-m", "vxnet")) -> None:
        """store: "etcd", or "kube" for agents in kube mode against the API-server simulator
        (vxnet/lab/kubeapi.py) on the fabric, nodes registered as Node objects.
        vxnet: the command that runs `vxnet` (an installed console script, say)."""
        if store not in ("etcd", "kube"):
            raise ValueError(f"store {store!r}: etcd or kube")
        self.stem, self.config = stem, config or DEFAULT_CONFIG
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vxnet-lab-"))
        self.agent_args = agent_args
        self.etcd_members, self.etcd_args = etcd_members, etcd_args
        self.segments = segments
        self.store = store
        self.vxnet = vxnet
        self.kubeapi: KubeApiServer | None = None
        self.lab: Lab | None = None
        self.etcd: EtcdServer | EtcdCluster | None = None
        self.agents: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def endpoint(self) -> str:
        if isinstance(self.etcd, EtcdCluster):
            return self.etcd.endpoint
        return f"http://{UNDERLAY4[254]}:2379"

    def start(self, nodes: int = 0) -> Cluster:
        self.lab = Lab(self.stem, self.segments)
        if self.store == "kube":
            self._start_kubeapi(self.lab)
        elif self.etcd_members == 1:
            self.etcd = EtcdServer(str(UNDERLAY4[254]), client_port=2379, peer_port=2380,
                                   netns=self.lab.fabric.name, workdir=self.workdir / "etcd",
                                   extra_args=self.etcd_args).start()
        else:  # members at .253, .252, ... on the fabric bridge
            hosts = [str(UNDERLAY4[253 - i]) for i in range(self.etcd_members)]
            for h in hosts:
                self.lab.fabric.ip("addr", "add", f"{h}/24", "dev", "br0")
            self.etcd = EtcdCluster(hosts, netns=self.lab.fabric.name,
                                    workdir=self.workdir / "etcd",
                                    extra_args=self.etcd_args).start()
        if self.config is not None and self.store == "etcd":
            self.etcdctl("put", f"{PREFIX}/config", json.dumps(self.config))
        for i in range(1, nodes + 1):
            self.add_node(i)
        return self

    def _start_kubeapi(self, lab: Lab) -> None:
        """The API server where etcd would be, assigning podCIDRs from the config's networks
        (as --allocate-node-cidrs does); net-conf.json is the config itself."""
        cfg = parse_config(json.dumps(self.config or DEFAULT_CONFIG))
        v4, v6 = cfg.ipv4, cfg.ipv6
        self.kubeapi = KubeApiServer(
            str(UNDERLAY4[254]), port=KUBE_PORT, netns=lab.fabric.name,
            workdir=self.workdir / "kubeapi",
            cluster_cidr=str(v4.network) if v4 else "", node_cidr_mask=v4.subnet_len if v4 else 24,
            cluster_cidr_v6=str(v6.network) if v6 else "",
            node_cidr_mask_v6=v6.subnet_len if v6 else 64,
            bookmark_interval=1.0).start()
        self.net_conf.write_text(json.dumps(self.config or DEFAULT_CONFIG))

    @property
    def net_conf(self) -> Path:
        return self.workdir / "net-conf.json"

    def _kube(self) -> KubeApiServer:
        if self.kubeapi is None:
            raise RuntimeError("the cluster is not in kube mode, or not started")
        return self.kubeapi

    def kubectl(self, *args: str, check: bool = True, token: str | None = None,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real kubectl, as the cluster's admin (or with `token`), from the fabric."""
        kube = self._kube()
        config = kube.kubeconfig(self.workdir / f"kubectl-{os.getpid()}.kubeconfig", token)
        res = subprocess.run(["ip", "netns", "exec", self._lab().fabric.name, "kubectl",
                              "--kubeconfig", str(config), "--cache-dir",
                              str(self.workdir / "kubectl-cache"), *args],
                             capture_output=True, text=True, timeout=60, input=input)
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
        return res

    def register(self, node: Node) -> None:
        """The Node object, as a kubelet registers it; its kubeconfig for the agent."""
        kube = self._kube()
        status, body = kube.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
            "status": {"addresses": [{"type": "InternalIP", "address": str(node.ip)},
                                     {"type": "Hostname", "address": node.name}]}})
        if status not in (201, 409):  # 409: registered already (an agent restarted)
            raise RuntimeError(f"registering {node.name}: {status} {body}")
        kube.kubeconfig(self.kubeconfig(node), kube.node_token(node.name), node.name,
                        token_file=self.workdir / node.name / "token")

    def kubeconfig(self, node: Node) -> Path:
        return self.workdir / node.name / "kubeconfig"

    def set_token(self, node: Node, token: str) -> None:
        """The node's bearer token, in the file its kubeconfig names (as a projected service
        account token is, rotated under the running agent)."""
        path = self.workdir / node.name / "token"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(token)
        tmp.replace(path)

    def _lab(self) -> Lab:
        """The lab; start() makes it, close() takes it away."""
        if self.lab is None:
            raise RuntimeError("the cluster is not started")
        return self.lab

    def _etcd(self) -> EtcdServer | EtcdCluster:
        if self.etcd is None:
            raise RuntimeError("the cluster is not started")
        return self.etcd

    def etcdctl(self, *args: str) -> str:
        return self._etcd().ctl(*args).stdout.decode()

    @property
    def nodes(self) -> list[Node]:
        return self._lab().nodes

    def node(self, index: int) -> Node:
        return next(n for n in self.nodes if n.index == index)

    def add_node(self, index: int, start_agent: bool = True, segment: int = 0) -> Node:
        node = self._lab().add_node(index, segment=segment)
        (self.workdir / node.name).mkdir(parents=True, exist_ok=True)
        if self.store == "kube":
            self.register(node)
        if start_agent:
            self.start_agent(node)
        return node

    def subnet_env(self, node: Node) -> Path:
        return self.workdir / node.name / "subnet.env"

    def agent_argv(self, node: Node, *extra: str) -> list[str]:
        args = (*self.agent_args, *extra)
        # the lab's uplink unless the caller chooses the interface itself
        iface = () if any(a.startswith("--iface") for a in args) else ("--iface", "eth0")
        store = ("--kube-subnet-mgr", "--kubeconfig-file", str(self.kubeconfig(node)),
                 "--net-config-path", str(self.net_conf)) if self.store == "kube" else (
                     "--etcd-endpoints", self.endpoint)
        return [*self.vxnet, "agent", *store, *iface, "--node-name", node.name,
                "--subnet-file", str(self.subnet_env(node)), "--healthz-port", str(API_PORT),
                *args]

    def start_agent(self, node: Node, *extra: str, env: dict[str, str] | None = None
                    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / node.name / "agent.log", "ab")  # noqa: SIM115 (child owns it)
        proc = subprocess.Popen(["ip", "netns", "exec", node.ns.name,
                                 *self.agent_argv(node, *extra)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log.close()
        self.agents[node.index] = proc
        return proc

    def stop_agent(self, node: Node, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        proc = self.agents.pop(node.index, None)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def log(self, node: Node) -> str:
        return (self.workdir / node.name / "agent.log").read_text(errors="replace")

    def api(self, node: Node, path: str) -> tuple[int, str]:
        return http_get(node.ns.name, API_PORT, path)

    def wait_ready(self, node: Node, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.agents.get(node.index)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"agent on {node.name} exited with {proc.returncode}:\n"
                                   f"{self.log(node)[-3000:]}")
            try:
                if self.api(node, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent on {node.name} not ready after {timeout}s:\n"
                           f"{self.log(node)[-3000:]}")

    def add_pod(self, node: Node) -> Pod:
        env = SubnetEnv.read(self.subnet_env(node))
        return self._lab().add_pod(node, of_family(env.subnet, ipaddress.IPv4Network),
                                   of_family(env.ipv6_subnet, ipaddress.IPv6Network))

    def cni_conf(self, node: Node) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": f"vxnet-{node.name}", "type": "vxnet-cni",
                "subnetFile": str(self.subnet_env(node)),
                "dataDir": str(self.workdir / node.name / "cni"),
                "delegate": {"isDefaultGateway": True}}

    def cni(self, node: Node, command: str, pod_ns: str, conf: dict[str, Any] | None = None,
            stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess[bytes]:
        """Call vxnet-cni inside the node exactly as a container runtime does."""
        # plugin=None spelled out: env is only the environment, never run_cni's plugin
        return run_cni(node.ns.name, command, pod_ns, stdin if stdin is not None else
                       json.dumps(conf or self.cni_conf(node)).encode(), plugin=None, **env)

    def add_cni_pod(self, node: Node) -> Pod:
        """A pod wired by the CNI plugin (bridge cni0 + host-local), as a runtime would."""
        ns = self._lab().new_ns(f"c{node.index}{len(node.pods) + 1}")
        res = self.cni(node, "ADD", ns.name)
        if res.returncode != 0:
            raise RuntimeError(f"CNI ADD on {node.name} failed: {res.stdout.decode()}")
        result: dict[str, Any] = json.loads(res.stdout)
        addrs = [ipaddress.ip_interface(i["address"]).ip for i in result["ips"]]
        pod = Pod(ns, next((a for a in addrs if isinstance(a, ipaddress.IPv4Address)), None),
                  next((a for a in addrs if isinstance(a, ipaddress.IPv6Address)), None))
        pod.cni_result = result
        node.pods.append(pod)
        return pod

    def save(self, path: Path) -> None:
        """What `vxnet lab down/exec` need after this process is gone."""
        lab = self._lab()
        store = self.kubeapi if self.store == "kube" else self._etcd()
        if store is None or store.proc is None:
            raise RuntimeError(f"the {self.store} store is not running")
        names = {"fabric": lab.fabric.name}
        for n in self.nodes:
            names[n.name] = n.ns.name
            for k, pod in enumerate(n.pods, 1):
                names[f"{n.name}-pod{k}"] = pod.ns.name
        path.write_text(json.dumps({
            "workdir": str(self.workdir), "namespaces": names,
            "pids": [store.proc.pid, *(p.pid for p in self.agents.values())]}, indent=2))

    def close(self) -> None:
        for index in list(self.agents):
            self.stop_agent(self.node(index), signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.close()
            self.etcd = None
        if self.kubeapi is not None:
            self.kubeapi.close()
            self.kubeapi = None
        if self.lab is not None:
            self.lab.close()
            self.lab = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
