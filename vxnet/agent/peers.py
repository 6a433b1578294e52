"""Everyone's leases as peers: lease events fold into every overlay's desired peers (memory
only: the reconciler writes), leases that cannot be read are counted and named, and the probe
targets follow the peers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from ipaddress import ip_address

from vxnet.agent.overlays import Overlays
from vxnet.health.checker import Target, TargetView
from vxnet.ip import IPAddress
from vxnet.kernel.allowlist import AllowList
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.peer import Peer
from vxnet.store.lease import Lease
from vxnet.store.store import EventKind, LeaseEvent

log = logging.getLogger(__name__)


def peer_of(key: str, lease: Lease, version: int) -> Peer | None:
    """The peer a lease stands for in one family. `key` is the lease's key as the store named
    it (str(lease.key)): passing the store's own string shares it (~60 B per peer)."""
    a = lease.attrs
    if version == 4 and lease.key.subnet and a.vtep_mac and a.public_ip:
        return Peer.of(key, lease.key.subnet, a.public_ip, a.vtep_mac, a.vni)
    if version == 6 and lease.key.subnet6 and a.vtep_mac6 and a.public_ipv6:
        return Peer.of(key, lease.key.subnet6, a.public_ipv6, a.vtep_mac6, a.vni)
    return None


def peers_of(leases: Mapping[str, Lease], version: int, own: str) -> list[Peer]:
    """The peers of a store's leases by key, ours (`own`) left out."""
    return [p for key, lease in leases.items() if key != own
            if (p := peer_of(key, lease, version)) is not None]


class PeerFeed:
    def __init__(self, overlays: Overlays) -> None:
        self.overlays = overlays
        self.invalid: dict[str, str] = {}  # lease key -> why it could not be read
        self.invalid_total = 0

    def note_invalid(self, key: str, reason: str) -> None:
        self.invalid_total += 1
        if self.invalid.get(key) != reason:
            log.warning("skipping lease %s: %s", key, reason)
        self.invalid[key] = reason

    def apply(self, ev: LeaseEvent) -> None:
        """One lease event (not our own key's) into every overlay's desired state."""
        if ev.kind is EventKind.INVALID:
            self.note_invalid(ev.key, ev.error.reason if ev.error else "invalid")
        else:
            self.invalid.pop(ev.key, None)
        live = ev.lease is not None and ev.kind in (EventKind.ADDED, EventKind.CHANGED)
        for version, ov in self.overlays.items():
            p = peer_of(ev.key, ev.lease, version) if live and ev.lease is not None else None
            if p is None:
                ov.plane.remove_peer(ev.key)
            else:
                ov.plane.add_peer(p)

    def replan(self, own: str) -> None:
        """Every peer checked again (the devices or our lease changed under them): each plane
        is offered again what it was offered, accepted or refused, except our own key."""
        for ov in self.overlays:
            offered = [p for p in ov.plane.admission.offered() if p.key != own]
            ov.plane.set_peers([])
            ov.plane.set_peers(offered)


REFUSED_LATELY = 120.0  # seconds: a peer refused this recently fails probes because of it


class HealthTargets:
    """What the peer probes aim at: every accepted peer, per family (its VXLAN address is its
    subnet's network address). The checker asks once a second; a target is made again only for
    a peer that changed since (the data plane's journal says which), and every one only when a
    device changed or the journal no longer reaches back."""

    def __init__(self, overlays: Overlays, allow: AllowList | None) -> None:
        self.overlays, self.allow = overlays, allow
        self._shape: object = None  # what every target shares: the devices' MTUs and ports
        self._seen: dict[int, int] = {}  # per family: the plane's generation last followed
        self._refused: tuple[frozenset[str], frozenset[IPAddress]] = (frozenset(), frozenset())
        self._targets: dict[str, Target] = {}  # "ipv4 <lease key>" -> its target

    def __call__(self) -> TargetView:
        refused = self.allow.refused_lately(REFUSED_LATELY) if self.allow is not None \
            else frozenset()
        if refused != self._refused[0]:
            self._refused = refused, frozenset(ip_address(s) for s in refused)
        shape = tuple((v, id(ov.plane), ov.device.mtu, ov.device.port)
                      for v, ov in self.overlays.items())
        if shape != self._shape:
            self._shape, self._seen, self._targets = shape, {}, {}
        full = not self._targets
        changed: list[str] = []
        for v, ov in self.overlays.items():
            plane = ov.plane
            keys = plane.changed_since(self._seen[v]) if v in self._seen else None
            self._seen[v] = plane.generation
            if keys is None:  # every peer of this family, and the targets of its gone ones
                full = True
                prefix = f"ipv{v} "
                for key in [k for k in self._targets if k.startswith(prefix)
                            and k[len(prefix):] not in plane.peers]:
                    del self._targets[key]
                keys = list(plane.peers)
            for key in dict.fromkeys(keys):  # a replaced peer is named twice
                changed.append(self._follow(v, ov, key, plane.peers.get(key)))
        return TargetView(self._targets, None if full else changed, self._refused[1])

    def _follow(self, v: int, ov: Overlay, key: str, p: Peer | None) -> str:
        """The target of one peer made again if it changed (dropped if the peer is gone);
        its target key."""
        tkey = f"ipv{v} {key}"
        t = self._targets.get(tkey)
        if p is None:
            self._targets.pop(tkey, None)
        elif t is None or int(t.public_ip) != p.ip or int(t.vxlan_ip) != p.net:
            self._targets[tkey] = Target(tkey, p.vxlan_ip, p.public_ip, ov.device.mtu,
                                         ov.device.port)
        return tkey
