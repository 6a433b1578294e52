"""The cluster network config (`<prefix>/config`), parsed and validated as flanneld does.

Keys are matched case-insensitively (Go's encoding/json does), defaults follow flannel, and every
problem is a ConfigError naming the offending key.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Generic, TypeVar

from vxnet.errors import ConfigError
from vxnet.ip import IPNetwork, NetworkT, contains, subnet_count

DEFAULT_VXLAN_PORT = 8472  # the Linux kernel's default, which flannel uses too
MAX_VNI = (1 << 24) - 1

# Keys flanneld knows but vxnet has no use for: accepted silently so a shared config stays quiet.
_FLANNEL_ONLY_KEYS = {"enablenftables"}
_TOP_KEYS = {
    "network", "subnetlen", "subnetmin", "subnetmax", "enableipv4", "enableipv6",
    "ipv6network", "ipv6subnetlen", "ipv6subnetmin", "ipv6subnetmax", "backend",
    "subnetallocation",
}
# vxnet's own key (flanneld ignores it): how a node's subnet is picked
ALLOCATIONS = ("random", "node-id")
RESOLUTIONS = ("up-front", "on-demand")  # Backend.Neighbours and Backend.FDB
_BACKEND_KEYS = {"type", "vni", "port", "gbp", "learning", "directrouting", "mtu", "macprefix",
                 "txchecksumoffload", "neighbours", "fdb"}


@dataclass(frozen=True, slots=True)
class BackendConfig:
    type: str = "vxlan"
    vni: int = 1
    port: int = DEFAULT_VXLAN_PORT
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int = 0  # underlay MTU; 0 = take it from the external interface
    tx_checksum: bool | None = None  # vxnet's TxChecksumOffload; None: leave the kernel's
    # vxnet's Neighbours/FDB: "on-demand" answers the kernel's misses instead of programming
    # every peer up front (kopeio's design; with FDB on demand too, flannel's first backend)
    neigh_on_demand: bool = False
    fdb_on_demand: bool = False


@dataclass(frozen=True, slots=True)
class Pool(Generic[NetworkT]):
    """One address family's part of the config: the network and the range subnets come from."""

    network: NetworkT
    subnet_len: int
    subnet_min: NetworkT
    subnet_max: NetworkT

    @property
    def size(self) -> int:
        return subnet_count(self.subnet_min, self.subnet_max)

    def contains(self, subnet: IPNetwork) -> bool:
        return contains(self.network, subnet)

    def in_range(self, subnet: NetworkT) -> bool:
        return (
            self.contains(subnet)
            and subnet.prefixlen == self.subnet_len
            and self.subnet_min.network_address <= subnet.network_address
            <= self.subnet_max.network_address
        )


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    ipv4: Pool[IPv4Network] | None
    ipv6: Pool[IPv6Network] | None
    backend: BackendConfig = BackendConfig()
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # "random" (flannel's: a free subnet at random) or "node-id" (contiv's: subnet number =
    # node ID, counted from SubnetMin, so a node's subnet follows from its name)
    subnet_allocation: str = "random"

    @property
    def enable_ipv4(self) -> bool:
        return self.ipv4 is not None

    @property
    def enable_ipv6(self) -> bool:
        return self.ipv6 is not None


def parse_config(raw: bytes | str) -> NetworkConfig:
    """Parse the JSON document stored at `<prefix>/config`."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError("config", f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("config", f"must be a JSON object, got {_type_name(doc)}")
    return config_from_dict(doc)


def config_from_dict(doc: dict[str, Any]) -> NetworkConfig:
    top = _Fields(doc, "", _TOP_KEYS | _FLANNEL_ONLY_KEYS)
    enable4 = top.get("EnableIPv4", bool, True)
    enable6 = top.get("EnableIPv6", bool, False)
    if not enable4 and not enable6:
        raise ConfigError("EnableIPv4", "IPv4 and IPv6 are both disabled; enable at least one")

    ipv4 = _pool(top, "", IPv4Network) if enable4 else None
    ipv6 = _pool(top, "IPv6", IPv6Network) if enable6 else None

    backend_doc = top.get("Backend", dict, {})
    be = _Fields(backend_doc, "Backend.", _BACKEND_KEYS)
    btype = be.get("Type", str, "vxlan")
    if btype.lower() != "vxlan":
        raise ConfigError(
            "Backend.Type", f"backend type {btype!r} is not supported: vxnet implements vxlan only"
        )
    vni = be.get("VNI", int, 1)
    if not 0 <= vni <= MAX_VNI:
        raise ConfigError("Backend.VNI", f"{vni} is outside 0..{MAX_VNI}")
    port = be.get("Port", int, 0)
    if not 0 <= port <= 65535:
        raise ConfigError("Backend.Port", f"{port} is outside 0..65535")
    mtu = be.get("MTU", int, 0)
    if mtu != 0 and not 576 <= mtu <= 65535:
        raise ConfigError("Backend.MTU", f"{mtu} is outside 576..65535 (or 0 to detect)")
    if mtu and enable6 and mtu - 70 < 1280:
        raise ConfigError("Backend.MTU", f"{mtu} leaves less than IPv6's minimum 1280 for pods")
    backend = BackendConfig(
        type="vxlan",
        vni=vni,
        port=port or DEFAULT_VXLAN_PORT,
        gbp=be.get("GBP", bool, False),
        learning=be.get("Learning", bool, False),
        direct_routing=be.get("DirectRouting", bool, False),
        mtu=mtu,
        tx_checksum=be.get("TxChecksumOffload", bool, None),
        neigh_on_demand=_resolution(be, "Neighbours"),
        fdb_on_demand=_resolution(be, "FDB"),
    )
    allocation = top.get("SubnetAllocation", str, "random")
    if allocation not in ALLOCATIONS:
        raise ConfigError("SubnetAllocation", f"{allocation!r} is not one of "
                          f"{', '.join(ALLOCATIONS)}")
    return NetworkConfig(ipv4, ipv6, backend, tuple(top.warnings + be.warnings), allocation)


def _resolution(be: _Fields, key: str) -> bool:
    value = be.get(key, str, "up-front")
    if value.lower() not in RESOLUTIONS:
        raise ConfigError(f"Backend.{key}", f"{value!r} is not one of {', '.join(RESOLUTIONS)}")
    return value.lower() == "on-demand"


def _pool(top: _Fields, pfx: str, family: type[NetworkT]) -> Pool[NetworkT]:
    version = 4 if family is IPv4Network else 6
    key = f"{pfx}Network"
    text = top.get(key, str, None)
    if text is None:
        needed = "EnableIPv6 is true" if version == 6 else "IPv4 is enabled"
        raise ConfigError(key, f"missing (required when {needed})")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not a CIDR network") from None
    if not isinstance(net, family):
        raise ConfigError(key, f"{text!r} is not an IPv{version} network")
    if str(net) != text.strip():
        top.warnings.append(f"{key}: {text!r} has host bits set; using {net}")

    max_len = 30 if version == 4 else 126
    default_len = (24 if net.prefixlen <= 22 else net.prefixlen + 2) if version == 4 else (
        64 if net.prefixlen <= 62 else net.prefixlen + 2
    )
    len_key = f"{pfx}SubnetLen"
    slen = top.get(len_key, int, 0) or default_len
    if slen > max_len:
        raise ConfigError(len_key, f"/{slen} is too long; at most /{max_len}")
    if slen < net.prefixlen + 2:
        raise ConfigError(
            len_key,
            f"/{slen} fits only {1 << max(slen - net.prefixlen, 0)} time(s) in {net}; "
            f"the network must hold at least 4 subnets (SubnetLen >= {net.prefixlen + 2})",
        )

    size = 1 << (net.max_prefixlen - slen)
    first = family((int(net.network_address) + size, slen))
    last = family((int(net.broadcast_address) + 1 - size, slen))
    smin = _bound(top, f"{pfx}SubnetMin", net, slen, first)
    smax = _bound(top, f"{pfx}SubnetMax", net, slen, last)
    if smin.network_address > smax.network_address:
        raise ConfigError(f"{pfx}SubnetMin", f"{smin.network_address} is above "
                          f"{pfx}SubnetMax {smax.network_address}")
    return Pool(net, slen, smin, smax)


def _bound(top: _Fields, key: str, net: NetworkT, slen: int, default: NetworkT) -> NetworkT:
    text = top.get(key, str, None)
    if text is None:
        return default
    try:
        addr = ipaddress.ip_address(text.split("/")[0])
    except ValueError:
        raise ConfigError(key, f"{text!r} is not an IP address") from None
    if addr.version != net.version or addr not in net:
        raise ConfigError(key, f"{addr} is outside Network {net}")
    sub = type(net)((addr, slen), strict=False)
    if sub.network_address != addr:
        raise ConfigError(key, f"{addr} is not on a /{slen} subnet boundary")
    return sub


_T = TypeVar("_T")  # the JSON type a key must have
_D = TypeVar("_D")  # the caller's default when the key is absent or null


class _Fields:
    """Case-insensitive, type-checked access to one JSON object's keys."""

    def __init__(self, doc: dict[str, Any], path: str, known: set[str]) -> None:
        self.doc = {k.lower(): (k, v) for k, v in doc.items()}
        self.path = path
        self.warnings: list[str] = [
            f"{path}{k}: unknown key, ignored" for k in doc if k.lower() not in known
        ]

    def get(self, key: str, kind: type[_T], default: _D) -> _T | _D:
        if key.lower() not in self.doc:
            return default
        _, value = self.doc[key.lower()]
        # JSON null is "not set", as in Go; bool is an int in Python but never in JSON.
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self.path}{key}",
                f"expected {_KIND_NAMES[kind]}, got {_type_name(value)} {json.dumps(value)}",
            )
        return value


_KIND_NAMES = {bool: "a boolean", int: "an integer", str: "a string", dict: "an object"}


def _type_name(v: Any) -> str:
    return {
        bool: "boolean", int: "number", float: "number", str: "string", list: "array",
        dict: "object", type(None): "null",
    }.get(type(v), type(v).__name__)
