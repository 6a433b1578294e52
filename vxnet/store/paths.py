"""Where things live in etcd. flannel's layout for config and subnets; vxnet's own extras under
`<prefix>/vxnet/`, a sibling flannel never reads (it reads `config` and watches `subnets/`)."""

from __future__ import annotations

from dataclasses import dataclass

from vxnet.errors import VxnetError

DEFAULT_PREFIX = "/coreos.com/network"


@dataclass(frozen=True, slots=True)
class Paths:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/") or "//" in self.prefix:
            raise VxnetError(f"--etcd-prefix: {self.prefix!r} must look like /a/b (no trailing /)")

    def _k(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    @property
    def config(self) -> bytes:
        return self._k("config")

    @property
    def subnets(self) -> bytes:
        return self._k("subnets", "")

    def subnet(self, key: str) -> bytes:
        return self._k("subnets", key)

    def owner(self, key: str) -> bytes:
        """Which node name holds a subnet key; attached to the same etcd lease."""
        return self._k("vxnet", "owners", key)

    @property
    def owners(self) -> bytes:
        return self._k("vxnet", "owners", "")

    def node(self, name: str) -> bytes:
        return self._k("vxnet", "nodes", name)

    @property
    def node_ids(self) -> bytes:
        return self._k("vxnet", "node-ids", "")

    def node_id(self, n: int) -> bytes:
        return self._k("vxnet", "node-ids", str(n))
