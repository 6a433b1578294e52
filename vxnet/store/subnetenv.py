"""subnet.env: the file flannel's CNI plugin and docker's --bip/--mtu read. Written atomically."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vxnet.errors import SubnetEnvError
from vxnet.ip import IPNetwork, first_host


@dataclass(frozen=True, slots=True)
class SubnetEnv:
    network: IPNetwork | None
    subnet: IPNetwork | None  # this node's subnet (written as its first host address/len)
    mtu: int
    ipmasq: bool
    ipv6_network: IPNetwork | None = None
    ipv6_subnet: IPNetwork | None = None

    def render(self) -> str:
        lines = []
        if self.network is not None and self.subnet is not None:
            lines += [
                f"FLANNEL_NETWORK={self.network}",
                f"FLANNEL_SUBNET={first_host(self.subnet)}/{self.subnet.prefixlen}",
            ]
        if self.ipv6_network is not None and self.ipv6_subnet is not None:
            lines += [
                f"FLANNEL_IPV6_NETWORK={self.ipv6_network}",
                f"FLANNEL_IPV6_SUBNET={first_host(self.ipv6_subnet)}/{self.ipv6_subnet.prefixlen}",
            ]
        lines += [f"FLANNEL_MTU={self.mtu}", f"FLANNEL_IPMASQ={str(self.ipmasq).lower()}"]
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        write_atomic(path, self.render())

    @classmethod
    def read(cls, path: str | Path) -> SubnetEnv:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise SubnetEnvError(f"{path}: {e.strerror}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, where: str = "subnet.env") -> SubnetEnv:
        env: dict[str, str] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, eq, value = line.partition("=")
            if not eq:
                raise SubnetEnvError(f"{where}:{n}: not NAME=VALUE: {line!r}")
            env[name.strip()] = value.strip().strip('"')

        def net(name: str, iface: bool = False) -> IPNetwork | None:
            if name not in env:
                return None
            try:
                if iface:
                    return ipaddress.ip_interface(env[name]).network
                return ipaddress.ip_network(env[name])
            except ValueError:
                raise SubnetEnvError(f"{where}: {name}={env[name]!r} is not a network") from None

        try:
            mtu = int(env.get("FLANNEL_MTU", "0"))
        except ValueError:
            raise SubnetEnvError(f"{where}: FLANNEL_MTU={env['FLANNEL_MTU']!r} is not a number") \
                from None
        result = cls(
            network=net("FLANNEL_NETWORK"),
            subnet=net("FLANNEL_SUBNET", iface=True),
            mtu=mtu,
            ipmasq=env.get("FLANNEL_IPMASQ", "false").lower() == "true",
            ipv6_network=net("FLANNEL_IPV6_NETWORK"),
            ipv6_subnet=net("FLANNEL_IPV6_SUBNET", iface=True),
        )
        if result.subnet is None and result.ipv6_subnet is None:
            raise SubnetEnvError(f"{where}: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set")
        return result


def write_atomic(path: str | Path, text: str) -> None:
    """Write via a temp file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
