"""Run a real etcd (Debian's etcd-server) with its own data dir and ports, optionally inside a
network namespace. Used by the test fixtures and the lab; stops only the process it started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Self

from vxnet.lab.process import ServerProcess

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]  # typeshed: a socket address is Any (its family's tuple)
        return port


class EtcdServer(ServerProcess):
    def __init__(self, host: str = "127.0.0.1", *, client_port: int | None = None,
                 peer_port: int | None = None, netns: str | None = None,
                 workdir: str | Path | None = None, name: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None,
                 extra_args: tuple[str, ...] = (), initial_cluster: str | None = None,
                 endpoints: str | None = None) -> None:
        """tls: (CA, server certificate, server key); clients must then present a certificate
        signed by that CA."""
        super().__init__(workdir, "vxnet-etcd-", "etcd.log", netns)
        self.host = host
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.name = name or f"vxnet-etcd-{os.getpid()}-{self.client_port}"
        self.data_dir = self.workdir / "data"
        self.tls = tls
        self.extra_args = extra_args
        self.initial_cluster = initial_cluster  # a member of a cluster: all members' peer URLs
        self.endpoints = endpoints  # what etcdctl talks to (default: this member)
        self.client_tls: tuple[Path, Path, Path] | None = None  # (CA, cert, key) for etcdctl

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def start(self, timeout: float = 20.0, wait: bool = True) -> Self:
        peer = self.peer_url
        argv = [
            ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state",
            "existing" if self.data_dir.exists() else "new",
            "--logger", "zap", "--log-outputs", "stderr", *self.extra_args,
        ]
        if self.tls:
            ca, cert, key = self.tls
            argv += ["--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file",
                     str(ca), "--client-cert-auth"]
        self._spawn(argv)
        if wait:
            self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        return self.ctl("endpoint", "health", check=False).returncode == 0

    def ctl(self, *args: str, check: bool = True, input: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        """Run etcdctl (v3 API) against this server."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        creds: list[str] = []
        if self.client_tls:
            ca, cert, key = self.client_tls
            creds = ["--cacert", str(ca), "--cert", str(cert), "--key", str(key)]
        return subprocess.run(
            self._wrap([ETCDCTL, "--endpoints", self.endpoints or self.endpoint,
                        "--dial-timeout", "1s",
                        "--command-timeout", "3s", *creds, *args]),
            env=env, capture_output=True, check=check, input=input, timeout=15)

    def enable_auth(self, prefix: str, user: str, password: str) -> None:
        """etcd authentication on: a root user, and `user` with a role limited to `prefix`."""
        for args in (("user", "add", "root:rootpw"), ("role", "add", "vxnet"),
                     ("role", "grant-permission", "vxnet", "--prefix=true", "readwrite",
                      prefix.rstrip("/") + "/"),
                     ("user", "add", f"{user}:{password}"), ("user", "grant-role", user, "vxnet"),
                     ("auth", "enable")):
            self.ctl(*args)


class EtcdCluster:
    """Several etcd members, one per host address, forming one cluster (for fault tests:
    kill the leader, freeze a member, take quorum away). etcdctl talks to all of them."""

    def __init__(self, hosts: list[str], *, netns: str | None = None, workdir: Path,
                 extra_args: tuple[str, ...] = ()) -> None:
        names = [f"m{i}-{os.getpid()}" for i in range(len(hosts))]
        initial = ",".join(f"{n}=http://{h}:2380" for n, h in zip(names, hosts, strict=True))
        endpoints = ",".join(f"http://{h}:2379" for h in hosts)
        self.members = [EtcdServer(h, client_port=2379, peer_port=2380, netns=netns,
                                   workdir=workdir / n, name=n, extra_args=extra_args,
                                   initial_cluster=initial, endpoints=endpoints)
                        for n, h in zip(names, hosts, strict=True)]
        self.endpoint = endpoints

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.members[0].proc

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for m in self.members:  # all at once: none is healthy before a quorum is up
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy(timeout)
        return self

    def ctl(self, *args: str, check: bool = True, input: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        return self.members[0].ctl(*args, check=check, input=input)

    def member_at(self, endpoint_url: str) -> EtcdServer:
        return next(m for m in self.members if m.endpoint == endpoint_url)

    def leader(self) -> EtcdServer:
        import json

        for m in self.members:
            if m.proc is None:
                continue
            res = subprocess.run(m._wrap([ETCDCTL, "--endpoints", m.endpoint, "endpoint",
                                          "status", "-w", "json"]),
                                 capture_output=True, timeout=15,
                                 env={**os.environ, "ETCDCTL_API": "3"})
            if res.returncode == 0:
                status = json.loads(res.stdout)[0]["Status"]
                if status["header"]["member_id"] == status["leader"]:
                    return m
        raise RuntimeError("no etcd member says it is the leader")

    def close(self) -> None:
        for m in self.members:
            m.close()
