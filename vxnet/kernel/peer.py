"""A remote node as the data plane sees it, and the checks that keep one bad peer harmless."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import BITS, IPAddress, IPNetwork, Span, mac_bytes, network, unsendable


class PeerError(VxnetError):
    """This peer can't be programmed; every other peer still is."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Addresses as integers and the MAC as its six bytes: a peer is built, checked, indexed
    and turned into kernel entries for every lease at start-up, and ipaddress objects made all
    of that slow (~15 µs a peer) and heavy; they are made only to show a peer."""

    key: str  # the lease key it came from, for logs and /v1/state
    version: int  # of the subnet (the overlay's)
    net: int  # the subnet's network address
    plen: int
    ip_version: int  # of the public IP (the underlay's)
    ip: int  # the public IP
    mac: bytes  # the VTEP MAC
    vni: int = 1  # what the lease says; must be ours

    @classmethod
    def of(cls, key: str, subnet: IPNetwork, public_ip: IPAddress, vtep_mac: str,
           vni: int = 1) -> Peer:
        """From a lease's values (ValueError for a MAC that is not six hex octets)."""
        return cls(key, subnet.version, int(subnet.network_address), subnet.prefixlen,
                   public_ip.version, int(public_ip), mac_bytes(vtep_mac), vni)

    @property
    def gateway(self) -> bytes:
        """Its address on the overlay, packed: its subnet's network address."""
        return self.net.to_bytes(4 if self.version == 4 else 16)

    @property
    def ip_bytes(self) -> bytes:
        return self.ip.to_bytes(4 if self.ip_version == 4 else 16)

    @property
    def subnet(self) -> IPNetwork:
        return network(self.version, self.net, self.plen)

    @property
    def vxlan_ip(self) -> IPAddress:
        """Its VXLAN device's address: its subnet's network address."""
        return (ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address)(self.net)

    @property
    def public_ip(self) -> IPAddress:
        return (ipaddress.IPv4Address if self.ip_version == 4 else ipaddress.IPv6Address)(self.ip)

    @property
    def vtep_mac(self) -> str:
        return self.mac.hex(":")


@dataclass(frozen=True, slots=True)
class Rules:
    """What a peer is checked against: our side of the overlay."""

    overlay_version: int
    underlay_version: int
    local: Span | None = None  # our own subnet
    network: Span | None = None  # the cluster's
    vni: int | None = None  # peers must carry ours
    own_ips: frozenset[int] = frozenset()  # this node's addresses of the underlay's family

    @classmethod
    def of(cls, overlay_version: int, underlay_version: int, local: IPNetwork | None = None,
           network: IPNetwork | None = None, vni: int | None = None,
           own_ips: Iterable[IPAddress] = ()) -> Rules:
        return cls(overlay_version, underlay_version,
                   Span.of(local) if local is not None else None,
                   Span.of(network) if network is not None else None, vni,
                   frozenset(int(a) for a in own_ips if a.version == underlay_version))


class SubnetSpace:
    """Accepted subnets as integers, grouped by prefix length: an overlap check is one lookup
    per length in use (normally one), not a walk over every subnet."""

    def __init__(self) -> None:
        # one int per subnet, (network << 8 | prefix length) << 1 | IPv6: a tuple costs 64 B more
        self._exact: dict[int, str] = {}  # subnet id -> owner
        self._lens: Counter[tuple[int, int]] = Counter()  # (version, plen) in use

    @staticmethod
    def _id(version: int, plen: int, addr: int) -> int:
        return (addr << 8 | plen) << 1 | (version == 6)

    def _owner_at(self, version: int, plen: int, addr: int) -> str | None:
        """Who holds the subnet of length `plen` that holds `addr`."""
        bits = BITS[version]
        return self._exact.get(self._id(version, plen, addr >> (bits - plen) << (bits - plen)))

    def conflict(self, version: int, addr: int, plen: int) -> str | None:
        """The owner of an accepted subnet that overlaps this one, if any."""
        for lv, lp in self._lens:
            if lv != version:
                continue
            if lp <= plen:  # an equal or larger accepted subnet containing this one
                owner = self._owner_at(version, lp, addr)
                if owner is not None:
                    return owner
            else:  # smaller accepted subnets inside this one: only with mixed lengths, so rare
                shift = BITS[version] - plen
                for sid, owner in self._exact.items():
                    if sid & 1 == (version == 6) and sid >> 1 & 0xFF == lp \
                            and sid >> 9 >> shift == addr >> shift:
                        return owner
        return None

    def owner(self, version: int, addr: int) -> str | None:
        """Who holds the accepted subnet this address is in (one lookup per length in use)."""
        for lv, lp in self._lens:
            if lv == version:
                owner = self._owner_at(version, lp, addr)
                if owner is not None:
                    return owner
        return None

    def add(self, version: int, addr: int, plen: int, owner: str) -> None:
        self._exact[self._id(version, plen, addr)] = owner
        self._lens[(version, plen)] += 1

    def remove(self, version: int, addr: int, plen: int) -> None:
        if self._exact.pop(self._id(version, plen, addr), None) is not None:
            key = (version, plen)
            self._lens[key] -= 1
            if not self._lens[key]:
                del self._lens[key]


def check_peer(peer: Peer, rules: Rules) -> None:
    """Raise PeerError naming the problem. Only a peer that passes steers our traffic: its FDB
    entry sends pods' packets to its public IP."""
    r, p = rules, peer
    if r.vni is not None and p.vni != r.vni:
        raise PeerError(f"peer {p.key}: VNI {p.vni} is not ours ({r.vni})")
    if p.version != r.overlay_version:
        raise PeerError(f"peer {p.key}: subnet {p.subnet} is not IPv{r.overlay_version}")
    if p.ip_version != r.underlay_version:
        raise PeerError(f"peer {p.key}: public IP {p.public_ip} is not IPv{r.underlay_version}"
                        " like our underlay")
    why = unsendable(p.ip, p.ip_version)
    if why is not None:
        raise PeerError(f"peer {p.key}: public IP {p.public_ip} is {why}, not a unicast "
                        "address a VXLAN packet can go to")
    if p.ip in r.own_ips:
        raise PeerError(f"peer {p.key}: public IP {p.public_ip} is one of this node's own")
    if r.network is not None and not r.network.holds(p.version, p.net, p.plen):
        raise PeerError(f"peer {p.key}: subnet {p.subnet} is outside the network {r.network}")
    if r.local is not None and r.local.overlaps(p.version, p.net, p.plen):
        raise PeerError(f"peer {p.key}: subnet {p.subnet} overlaps our own {r.local}")
    if p.plen == BITS[p.version]:
        raise PeerError(f"peer {p.key}: subnet {p.subnet} is a single address")
    if p.mac[0] & 1:
        raise PeerError(f"peer {p.key}: VTEP multicast MAC address: {p.vtep_mac!r}")
    if p.mac == bytes(6):
        raise PeerError(f"peer {p.key}: VTEP all-zero MAC address: {p.vtep_mac!r}")
