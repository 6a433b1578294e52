"""Subnet leases in flannel's exact format: keys `10.5.52.0-24[&fc00::-64]`, JSON values.

Decoding is strict (a typed LeaseDecodeError carrying the key, nothing else escapes) because the
values come from other nodes; encoding writes what flanneld writes, field for field.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Literal, overload

from vxnet.errors import LeaseDecodeError
from vxnet.ip import IPAddress, NetworkT, ip_int, normalize_mac, parse_ip

BACKEND_TYPE = "vxlan"
_NO_V4 = "0.0.0.0-0"  # what flanneld writes as the IPv4 half of an IPv6-only key


@dataclass(frozen=True, slots=True)
class SubnetKey:
    """The name of a lease: an IPv4 subnet, an IPv6 subnet, or both (dual stack)."""

    subnet: IPv4Network | None
    subnet6: IPv6Network | None = None

    def __post_init__(self) -> None:
        if self.subnet is None and self.subnet6 is None:
            raise ValueError("a subnet key needs an IPv4 or an IPv6 subnet")

    def __str__(self) -> str:
        v4 = _NO_V4 if self.subnet is None else _sep(self.subnet)
        return v4 if self.subnet6 is None else f"{v4}&{_sep(self.subnet6)}"

    @classmethod
    def parse(cls, text: str) -> SubnetKey:
        v4text, amp, v6text = text.partition("&")
        if v4text == _NO_V4 and not amp:
            raise LeaseDecodeError(text, "not a subnet key: names no subnet")
        try:
            subnet = None if v4text == _NO_V4 and amp else _parse_net(v4text, IPv4Network)
            subnet6 = _parse_net(v6text, IPv6Network) if amp else None
            return cls(subnet, subnet6)
        except ValueError as e:
            raise LeaseDecodeError(text, f"not a subnet key: {e}") from None


def _sep(net: IPv4Network | IPv6Network) -> str:
    return f"{net.network_address}-{net.prefixlen}"


def _parse_net(text: str, family: type[NetworkT]) -> NetworkT:
    version = 4 if family is IPv4Network else 6
    addr, dash, plen = text.rpartition("-")
    if not dash or not plen.isdigit() or not plen.isascii():
        raise ValueError(f"{text!r} is not ADDRESS-PREFIXLEN")
    try:
        ip = ip_int(addr, version)
    except ValueError:
        raise ValueError(f"{text!r} is not IPv{version}") from None
    # from an int with the explicit class: given an address object, ipaddress re-parses its str
    return family((ip, int(plen)), strict=True)


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """The value of a subnet key: what a node publishes about itself."""

    public_ip: IPv4Address | None
    vtep_mac: str | None = None  # BackendData.VtepMAC (IPv4 overlay device)
    vni: int = 1
    public_ipv6: IPv6Address | None = None
    vtep_mac6: str | None = None  # BackendV6Data.VtepMAC (IPv6 overlay device)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "PublicIP": str(self.public_ip or "0.0.0.0"),
            "PublicIPv6": None if self.public_ipv6 is None else str(self.public_ipv6),
            "BackendType": BACKEND_TYPE,
        }
        if self.vtep_mac is not None:
            doc["BackendData"] = {"VNI": self.vni, "VtepMAC": self.vtep_mac}
        if self.vtep_mac6 is not None:
            doc["BackendV6Data"] = {"VNI": self.vni, "VtepMAC": self.vtep_mac6}
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Lease:
    """A decoded subnet lease. `etcd_lease` is 0 for a reservation (a key pinned without TTL)."""

    key: SubnetKey
    attrs: LeaseAttrs
    etcd_lease: int = 0
    mod_revision: int = 0

    @property
    def reserved(self) -> bool:
        return self.etcd_lease == 0

    def fingerprint(self) -> int:
        """What the lease says that matters to anyone (its peer's data, its etcd lease) as one
        int: a store's watch keeps this per key rather than the decoded lease (~350 B), which
        lives on only as the peer built from it. A rewrite with the same fingerprint (and key)
        is no event."""
        return hash((self.attrs, self.etcd_lease))


# An IPv4 lease value exactly as flanneld and vxnet write it, read by one match instead of
# the JSON walk below (~4x faster, for every lease at start-up); anything else, or a match the
# checks below would refuse, takes the JSON walk, which gives the same answer where both apply
# (tests/unit/store/test_lease.py holds them to it).
_WRITTEN_V4 = re.compile(
    rb'\{"PublicIP":"([0-9.]{7,15})","PublicIPv6":null,"BackendType":"vxlan",'
    rb'"BackendData":\{"VNI":(0|[1-9][0-9]{0,7}),"VtepMAC":"([0-9a-f][02468ace](?::[0-9a-f]{2}){5})"\}\}')
_NO_MAC = b"00:00:00:00:00:00"


def decode_value(key: str, raw: bytes | str) -> LeaseAttrs:
    """Decode a lease value written by flanneld or vxnet. Raises only LeaseDecodeError."""
    if type(raw) is bytes and (m := _WRITTEN_V4.fullmatch(raw)) is not None:
        pub, vni, mac = m.groups()
        with contextlib.suppress(ValueError):
            ip = ip_int(pub.decode(), 4)
            if ip and int(vni) < 1 << 24 and mac != _NO_MAC:
                return LeaseAttrs(IPv4Address(ip), mac.decode(), int(vni))
    return _decode_json(key, raw)


def _decode_json(key: str, raw: bytes | str) -> LeaseAttrs:
    try:
        doc = _json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise LeaseDecodeError(key, f"value is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise LeaseDecodeError(key, "value is not a JSON object")
    f = {k.lower(): v for k, v in doc.items()}  # Go's decoder matches names case-insensitively

    btype = f.get("backendtype") or BACKEND_TYPE
    if not isinstance(btype, str) or btype.lower() != BACKEND_TYPE:
        raise LeaseDecodeError(key, f"BackendType {btype!r} is not vxlan")
    pub = _addr(key, "PublicIP", f.get("publicip"), 4)
    pub6 = _addr(key, "PublicIPv6", f.get("publicipv6"), 6)
    if pub is not None and pub.is_unspecified:
        pub = None
    v4 = _backend(key, "BackendData", f.get("backenddata"))
    v6 = _backend(key, "BackendV6Data", f.get("backendv6data"))
    if v4 is not None:
        vni = v4[1]
        if v6 is not None and v6[1] != vni:
            raise LeaseDecodeError(key, f"BackendData.VNI {vni} differs from BackendV6Data.VNI "
                                   f"{v6[1]}")
    elif v6 is not None:
        vni = v6[1]
    else:
        raise LeaseDecodeError(key, "neither BackendData nor BackendV6Data carries a VtepMAC")
    return LeaseAttrs(pub, v4[0] if v4 is not None else None, vni, pub6,
                      v6[0] if v6 is not None else None)


_RAW_DECODE = json.JSONDecoder().raw_decode
_JSON_SPACE = " \t\n\r"


def _json(raw: bytes | str) -> Any:
    """json.loads for UTF-8 (as Go writes it): ~4 µs less a lease, on every lease at start-up.
    A BOM is refused, as by Go's decoder."""
    text = (raw.decode() if isinstance(raw, bytes) else raw).strip(_JSON_SPACE)
    doc, end = _RAW_DECODE(text)
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return doc


@overload
def _addr(key: str, name: str, value: Any, version: Literal[4]) -> IPv4Address | None: ...
@overload
def _addr(key: str, name: str, value: Any, version: Literal[6]) -> IPv6Address | None: ...
def _addr(key: str, name: str, value: Any, version: int) -> IPAddress | None:
    """The IPv<version> address in `value`, None for JSON null; the overloads name its class."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise LeaseDecodeError(key, f"{name} is not a string: {value!r:.60}")
    try:
        return parse_ip(value, version)
    except ValueError:
        pass
    try:
        other = ipaddress.ip_address(value)
    except ValueError:
        raise LeaseDecodeError(key, f"{name} {value!r:.60} is not an IP address") from None
    raise LeaseDecodeError(key, f"{name} {other} is not IPv{version}")


def _backend(key: str, name: str, value: Any) -> tuple[str, int] | None:
    """(VtepMAC, VNI) of a BackendData or BackendV6Data object; None if it is absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LeaseDecodeError(key, f"{name} is not a JSON object")
    f = {k.lower(): v for k, v in value.items()}
    vni = f.get("vni", 1)
    if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni < 1 << 24:
        raise LeaseDecodeError(key, f"{name}.VNI {vni!r:.60} is not a VNI")
    mac = f.get("vtepmac")
    if not isinstance(mac, str):
        raise LeaseDecodeError(key, f"{name}.VtepMAC is missing or not a string")
    try:
        return normalize_mac(mac), vni
    except ValueError as e:
        raise LeaseDecodeError(key, f"{name}.VtepMAC: {e}") from None


def decode_lease(key: str, raw: bytes | str, etcd_lease: int = 0, mod_revision: int = 0) -> Lease:
    """Decode one `subnets/` entry: `key` is the part after `subnets/`."""
    sk = SubnetKey.parse(key)
    attrs = decode_value(key, raw)
    if sk.subnet is not None and attrs.vtep_mac is None:
        raise LeaseDecodeError(key, "IPv4 subnet but no BackendData.VtepMAC")
    if sk.subnet6 is not None and attrs.vtep_mac6 is None:
        raise LeaseDecodeError(key, "IPv6 subnet but no BackendV6Data.VtepMAC")
    if sk.subnet is not None and attrs.public_ip is None:
        raise LeaseDecodeError(key, "IPv4 subnet but no PublicIP")
    if sk.subnet6 is not None and attrs.public_ipv6 is None:
        raise LeaseDecodeError(key, "IPv6 subnet but no PublicIPv6")
    return Lease(sk, attrs, etcd_lease, mod_revision)
