"""Peer admission for one overlay family: which peers may steer this node's traffic. A peer
is accepted only if it passes check_peer (kernel/peer.py) and claims nothing another accepted
peer holds (an overlapping subnet, the same VTEP MAC); every other peer gets a reason."""

from __future__ import annotations

import logging
from collections import Counter, deque

from vxnet.ip import IPAddress
from vxnet.kernel.peer import Peer, PeerError, Rules, SubnetSpace, check_peer

log = logging.getLogger(__name__)
JOURNAL = 4096  # changes to `peers` remembered for readers that follow them one by one


class Admission:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.peers: dict[str, Peer] = {}  # accepted, by lease key (read-only for others)
        self.rejected: dict[str, str] = {}  # lease key -> why
        self._refused: dict[str, Peer] = {}  # lease key -> the peer as offered, to offer again
        self.generation = 0  # counts changes to `peers`, for readers that cache a view of them
        self._journal: deque[str] = deque(maxlen=JOURNAL)  # the keys of the last changes
        self._space = SubnetSpace()
        self._macs: dict[bytes, str] = {}  # VTEP MAC -> lease key
        # accepted peers' public IPs (several peers may share one), and a count of changes to
        # that set: the allow-list asks after every batch of events, and rebuilding the set from
        # every peer each time cost ~5 ms at 5 000 peers
        self.ips: Counter[IPAddress] = Counter()
        self.ips_generation = 0

    def admit(self, p: Peer) -> str | None:
        """Accept the peer, or say why not. The caller removed any earlier peer at the same
        key first."""
        try:
            check_peer(p, self.rules)
            other = self._space.conflict(p.version, p.net, p.plen)
            if other is not None:
                raise PeerError(f"peer {p.key}: subnet {p.subnet} overlaps peer {other}")
            if p.mac in self._macs:
                raise PeerError(f"peer {p.key}: VTEP MAC {p.vtep_mac} is already peer "
                                f"{self._macs[p.mac]}'s")
        except PeerError as e:
            return self.reject(p, str(e))
        self.peers[p.key] = p
        self._changed(p.key)
        self._space.add(p.version, p.net, p.plen, p.key)
        self._macs[p.mac] = p.key
        ip = p.public_ip  # hashed twice, not three times: an address hashes as its hex text
        held = self.ips.get(ip, 0)
        if not held:
            self.ips_generation += 1
        self.ips[ip] = held + 1
        return None

    def reject(self, peer: Peer, why: str) -> str:
        """Not (or no longer) accepted; logged once per reason."""
        if self.rejected.get(peer.key) != why:
            log.warning("skipping %s", why)
        self.rejected[peer.key] = why
        self._refused[peer.key] = peer
        return why

    def offered(self) -> list[Peer]:
        """Every peer offered and not withdrawn, accepted or refused: what to offer again when
        the rules change (the store keeps no decoded leases to rebuild them from)."""
        return [*self.peers.values(), *self._refused.values()]

    def remove(self, key: str) -> Peer | None:
        """Forget the peer at `key` (accepted or rejected); the accepted one it was, if any."""
        self.rejected.pop(key, None)
        self._refused.pop(key, None)
        p = self.peers.pop(key, None)
        if p is not None:
            self._changed(key)
            self._space.remove(p.version, p.net, p.plen)
            self._macs.pop(p.mac, None)
            ip = p.public_ip
            held = self.ips.pop(ip) - 1
            if held:
                self.ips[ip] = held
            else:
                self.ips_generation += 1
        return p

    def _changed(self, key: str) -> None:
        self.generation += 1
        self._journal.append(key)

    def changed_since(self, generation: int) -> list[str] | None:
        """The keys of the peers accepted or dropped since `generation` (a key may repeat), or
        None when that is further back than the journal reaches: then only `peers` can say.
        Readers that follow the peers (the probe targets) pay per change, not per peer."""
        n = self.generation - generation
        if n > len(self._journal) or n < 0:
            return None
        return list(self._journal)[len(self._journal) - n:] if n else []

    def owner(self, addr: bytes) -> Peer | None:
        """The accepted peer whose subnet holds this address."""
        key = self._space.owner(self.rules.overlay_version, int.from_bytes(addr))
        return self.peers.get(key) if key is not None else None

    def by_mac(self, mac: bytes) -> Peer | None:
        key = self._macs.get(mac)
        return self.peers.get(key) if key is not None else None
