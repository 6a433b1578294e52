"""A remote node as the data plane sees it, and the checks that keep one bad peer harmless."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import IPAddress, IPNetwork, contains, normalize_mac, overlap, unsendable


class PeerError(VxnetError):
    """This peer can't be programmed; every other peer still is."""


@dataclass(frozen=True, slots=True)
class Peer:
    key: str  # the lease key it came from, for logs and /v1/state
    subnet: IPNetwork
    public_ip: IPAddress
    vtep_mac: str
    vni: int = 1  # what the lease says; must be ours

    @property
    def mac_bytes(self) -> bytes:
        return bytes.fromhex(self.vtep_mac.replace(":", ""))


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
        bits = 32 if version == 4 else 128
        return self._exact.get(self._id(version, plen, addr >> (bits - plen) << (bits - plen)))

    def conflict(self, net: IPNetwork) -> str | None:
        """The owner of an accepted subnet that overlaps `net`, if any."""
        v, plen, addr = net.version, net.prefixlen, int(net.network_address)
        for lv, lp in self._lens:
            if lv != v:
                continue
            if lp <= plen:  # an equal or larger accepted subnet containing net
                owner = self._owner_at(v, lp, addr)
                if owner is not None:
                    return owner
            else:  # smaller accepted subnets inside net: only with mixed lengths, so rare
                shift = net.max_prefixlen - plen
                for sid, owner in self._exact.items():
                    if sid & 1 == (v == 6) and sid >> 1 & 0xFF == lp \
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

    def add(self, net: IPNetwork, owner: str) -> None:
        self._exact[self._id(net.version, net.prefixlen, int(net.network_address))] = owner
        self._lens[(net.version, net.prefixlen)] += 1

    def remove(self, net: IPNetwork) -> None:
        sid = self._id(net.version, net.prefixlen, int(net.network_address))
        if self._exact.pop(sid, None) is not None:
            key = (net.version, net.prefixlen)
            self._lens[key] -= 1
            if not self._lens[key]:
                del self._lens[key]


def check_peer(peer: Peer, *, overlay_version: int, underlay_version: int,
               local: IPNetwork | None, network: IPNetwork | None, vni: int | None = None,
               own_ips: frozenset[IPAddress] = frozenset()) -> Peer:
    """Raise PeerError naming the problem, or return the peer with its MAC normalised. Only a
    peer that passes steers our traffic: its FDB entry sends pods' packets to its public IP."""
    if vni is not None and peer.vni != vni:
        raise PeerError(f"peer {peer.key}: VNI {peer.vni} is not ours ({vni})")
    if peer.subnet.version != overlay_version:
        raise PeerError(f"peer {peer.key}: subnet {peer.subnet} is not IPv{overlay_version}")
    if peer.public_ip.version != underlay_version:
        raise PeerError(f"peer {peer.key}: public IP {peer.public_ip} is not IPv{underlay_version}"
                        " like our underlay")
    why = unsendable(peer.public_ip)
    if why is not None:
        raise PeerError(f"peer {peer.key}: public IP {peer.public_ip} is {why}, not a unicast "
                        "address a VXLAN packet can go to")
    if peer.public_ip in own_ips:
        raise PeerError(f"peer {peer.key}: public IP {peer.public_ip} is one of this node's own")
    if network is not None and not contains(network, peer.subnet):
        raise PeerError(f"peer {peer.key}: subnet {peer.subnet} is outside the network {network}")
    if local is not None and overlap(peer.subnet, local):
        raise PeerError(f"peer {peer.key}: subnet {peer.subnet} overlaps our own {local}")
    if peer.subnet.prefixlen == peer.subnet.max_prefixlen:  # num_addresses < 2, but cheaper
        raise PeerError(f"peer {peer.key}: subnet {peer.subnet} is a single address")
    try:
        mac = normalize_mac(peer.vtep_mac)
    except ValueError as e:
        raise PeerError(f"peer {peer.key}: VTEP {e}") from None
    # the same object when nothing changed: admitted peers are kept, one each
    return peer if mac is peer.vtep_mac else Peer(peer.key, peer.subnet, peer.public_ip, mac,
                                                   peer.vni)
