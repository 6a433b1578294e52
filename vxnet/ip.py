"""IP helpers shared by the store and the kernel layers."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
# One network of either family, where what comes back is of the same family as what went in
NetworkT = TypeVar("NetworkT", ipaddress.IPv4Network, ipaddress.IPv6Network)
AddressT = TypeVar("AddressT", ipaddress.IPv4Address, ipaddress.IPv6Address)  # the same, addresses


_FAMILY: dict[int, tuple[socket.AddressFamily,
                          type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]]] = {
    4: (socket.AF_INET, ipaddress.IPv4Address), 6: (socket.AF_INET6, ipaddress.IPv6Address)}


def parse_ip(text: str, version: int) -> IPAddress:
    """An address of the given version from text; ValueError otherwise."""
    return _FAMILY[version][1](ip_int(text, version))


def ip_int(text: str, version: int) -> int:
    """An address of the given version from text, as its integer; ValueError otherwise.
    inet_pton does the work in C: decoding thousands of leases through ipaddress' string
    parser dominated start-up."""
    try:
        return int.from_bytes(socket.inet_pton(_FAMILY[version][0], text))
    except (OSError, UnicodeEncodeError, ValueError):
        raise ValueError(f"{text!r} is not an IPv{version} address") from None


_V4_BY_FIRST_OCTET = {0: "unspecified", 127: "loopback"}


def unsendable(x: int, version: int) -> str | None:
    """Why a VXLAN packet could not (or must not) be sent to the IPv<version> address `x` as a
    peer's underlay address, or None for a unicast address. Documentation and private ranges
    are fine: underlays use them."""
    if version == 4:  # integer tests: this runs for every peer of a 20 000-peer sync
        why = _V4_BY_FIRST_OCTET.get(x >> 24)
        if why is not None:
            return why
        if x >> 28 == 14:
            return "multicast"
        if x == 0xFFFFFFFF:
            return "broadcast"
        if x >> 16 == 0xA9FE:
            return "link-local"
        return "reserved" if x >> 28 == 15 else None
    ip = ipaddress.IPv6Address(x)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link-local"
    if ip.is_reserved:  # ::/8 (mapped and compatible forms) and friends
        return "reserved"
    return None


BITS = {4: 32, 6: 128}


def network(version: int, net: int, plen: int) -> IPNetwork:
    """The ipaddress object, to show: from an int, ip_network would guess IPv4 for small ones."""
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((net, plen))


@dataclass(frozen=True, slots=True)
class Span:
    """A subnet as integers, for the checks every peer goes through."""

    version: int
    net: int
    plen: int

    @classmethod
    def of(cls, net: IPNetwork) -> Span:
        return cls(net.version, int(net.network_address), net.prefixlen)

    def holds(self, version: int, net: int, plen: int) -> bool:
        """That subnet lies inside this one."""
        shift = BITS[self.version] - self.plen
        return version == self.version and plen >= self.plen and net >> shift == \
            self.net >> shift

    def overlaps(self, version: int, net: int, plen: int) -> bool:
        """One holds the other: they agree on the shorter prefix."""
        shift = BITS[self.version] - min(self.plen, plen)
        return version == self.version and net >> shift == self.net >> shift

    def __str__(self) -> str:
        return str(network(self.version, self.net, self.plen))


def contains(outer: IPNetwork, inner: IPNetwork) -> bool:
    """inner lies inside outer (same family): ipaddress' subnet_of, in integer arithmetic."""
    return Span.of(outer).holds(inner.version, int(inner.network_address), inner.prefixlen)


def subnet_count(lo: IPNetwork, hi: IPNetwork) -> int:
    """How many subnets of lo's size lie from lo to hi inclusive."""
    size = lo.num_addresses
    return (int(hi.network_address) - int(lo.network_address)) // size + 1


def nth_subnet(lo: NetworkT, n: int) -> NetworkT:
    """The n-th subnet of lo's size counting from lo."""
    base = int(lo.network_address) + n * lo.num_addresses
    return type(lo)((base, lo.prefixlen))  # lo's family: ip_network() would guess from base


def subnets_between(lo: NetworkT, hi: NetworkT) -> Iterator[NetworkT]:
    for i in range(subnet_count(lo, hi)):
        yield nth_subnet(lo, i)


def of_family(net: IPNetwork | None, cls: type[NetworkT]) -> NetworkT | None:
    """net if it is a `cls` (IPv4Network or IPv6Network), else None: a network read from text,
    which may be of either family, for a slot that holds one family only."""
    return net if isinstance(net, cls) else None


def first_host(net: IPNetwork) -> IPAddress:
    """The first usable address (network + 1), which flannel hands to the bridge."""
    return net.network_address + 1


_CANONICAL_MAC = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}")


def mac_bytes(mac: str) -> bytes:
    """The six bytes of a MAC written as hex octets (colons or dashes between); ValueError
    otherwise."""
    octets = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return octets


def normalize_mac(mac: str) -> str:
    """Lower-case colon form; ValueError if it is not a 6-byte unicast MAC."""
    if _CANONICAL_MAC.fullmatch(mac) and mac != "00:00:00:00:00:00":
        return mac  # the common case, already as flanneld and vxnet write it
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    try:
        octets = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r}") from None
    if octets[0] & 1:
        raise ValueError(f"multicast MAC address: {mac!r}")
    if octets == bytes(6):
        raise ValueError(f"all-zero MAC address: {mac!r}")
    return ":".join(f"{b:02x}" for b in octets)
