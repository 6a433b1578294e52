"""Network namespaces for the lab and the tests: unique names, always removed, and a way to
open sockets inside one from this process."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator

from vxnet.nsenter import entered


def unique_name(stem: str) -> str:
    """`vx-<stem>-<8 hex>`: unique per call, short enough for interface names derived from it."""
    return f"vx-{stem}-{uuid.uuid4().hex[:8]}"


def ip(*args: str, netns: str | None = None, check: bool = True, input: str | None = None
       ) -> subprocess.CompletedProcess[str]:
    """Run iproute2 (`ip`, or `bridge` when args[0] == "bridge") optionally inside a netns."""
    argv = list(args) if args[0] in ("bridge", "tc") else ["ip", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    res = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


class Netns:
    """A named network namespace that exists between create() and delete()."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, stem: str) -> Netns:
        ns = cls(unique_name(stem))
        ip("netns", "add", ns.name)
        ip("link", "set", "lo", "up", netns=ns.name)
        return ns

    def delete(self) -> None:
        ip("netns", "del", self.name, check=False)

    def run(self, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                             text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(argv)}: {res.stderr.strip()}")
        return res

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ip(*args, netns=self.name, check=check)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch this thread into the namespace (sockets made inside stay bound to it)."""
        with entered(f"/run/netns/{self.name}"):
            yield

    def __str__(self) -> str:
        return self.name


def netns_names() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
