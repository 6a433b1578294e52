"""Peer state for one overlay family on one VXLAN device: which entries each peer needs, and
the passes that write them (sets L2 before L3, deletes the other way round).

Who decides what lives elsewhere: admission (kernel/admission.py) says which peers may steer
traffic, each table's owner (routes.py, neighbours.py, nexthops.py, the on-demand answers of
resolver.py) holds its dump, its ownership rule and its cache, nhids.py hands out nexthop ids.

Per remote peer: FDB `<peer VTEP MAC> -> <peer public IP>`, permanent neighbour `<peer .0> ->
<peer VTEP MAC>`, and a route to the peer's subnet via its .0, onlink -- through a nexthop object
when the kernel has them (inserts stay O(1) at 20k peers), else a plain gateway route. With
DirectRouting and a peer on our parent's own subnet: only a route via its public IP there.

With on-demand neighbours (kernel/resolver.py): one route for the whole pod network through the
device instead of a route and a neighbour per peer; the kernel asks for each remote pod's MAC.
With on-demand FDB as well, even the per-peer FDB entry waits until the kernel asks for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from vxnet.ip import BITS, IPAddress, IPNetwork, Span
from vxnet.kernel import netlink as nl
from vxnet.kernel.admission import Admission
from vxnet.kernel.neighbours import FdbTable, L2Table, NeighTable, dump_l2, notify_l2
from vxnet.kernel.nexthops import NexthopDump, NexthopTable
from vxnet.kernel.nhids import NexthopIds
from vxnet.kernel.peer import Peer, PeerError, Rules
from vxnet.kernel.port import Kernel
from vxnet.kernel.resolver import MissResolver, OnDemandStatus
from vxnet.kernel.routes import PROTO_VXNET, RouteTable
from vxnet.kernel.table import DeviceTable, PassResult

CHUNK = 1000  # requests (or peers built) per step: a few ms each, so the loop stays fair
AnyTable = DeviceTable[Any, Any]


@dataclass(frozen=True, slots=True)
class PlaneStatus:
    """Counts, cheap enough for every scrape."""

    peers: int
    programmed: int
    rejected: Mapping[str, str]  # lease key -> why
    writes: dict[str, int]  # successful kernel writes per table since start
    failing: int  # entries whose last write failed (retried with backoff)
    on_demand: OnDemandStatus | None


@dataclass(frozen=True, slots=True)
class PlaneDetail:
    """Per peer, for /v1/state."""

    peers: Mapping[str, Peer]
    programmed: frozenset[str]
    drift: dict[str, dict[str, list[str]]]


@dataclass(frozen=True, slots=True)
class PlaneSpec:
    family: int  # overlay address family
    ifindex: int  # our VXLAN device
    underlay_version: int
    local_subnet: IPNetwork | None = None
    network: IPNetwork | None = None
    parent_ifindex: int = 0
    parent_networks: tuple[IPNetwork, ...] = ()  # connected subnets, for DirectRouting
    direct_routing: bool = False
    use_nexthops: bool = True
    vni: int | None = None  # peers must carry ours
    own_ips: frozenset[IPAddress] = frozenset()  # this node's addresses: never a peer's
    neigh_on_demand: bool = False  # remote pods' neighbours answered when the kernel asks
    fdb_on_demand: bool = False  # and peers' FDB entries too

    @property
    def version(self) -> int:
        return 4 if self.family == nl.AF_INET else 6

    def rules(self) -> Rules:
        return Rules.of(self.version, self.underlay_version, self.local_subnet, self.network,
                        self.vni, self.own_ips)


class Dataplane:
    def __init__(self, kernel: Kernel, spec: PlaneSpec) -> None:
        self.kernel = kernel
        self.spec, self._parents = spec, _parents(spec)
        self.admission = Admission(spec.rules())
        self.fdb = FdbTable(spec.ifindex)
        self.neigh = NeighTable(spec.family, spec.ifindex)
        self.nexthop = NexthopTable(spec.family, spec.ifindex)
        self.route = RouteTable(spec.family, spec.ifindex)
        self.nhids = NexthopIds(spec.family)
        self.resolver = MissResolver(
            spec.family, spec.ifindex, neighbours=spec.neigh_on_demand, fdb=spec.fdb_on_demand,
            owner_mac=self._owner_mac, mac_ip=self._mac_ip,
        ) if spec.neigh_on_demand or spec.fdb_on_demand else None
        self.parked = False  # our device is gone or down: no passes until it is back
        self._built = False  # desired state holds the admitted peers' entries
        self._adopting = False  # built, and nexthop ids of an earlier run may still be claimed

    @property
    def peers(self) -> dict[str, Peer]:
        """Accepted peers by lease key (read only: change them through add/remove_peer)."""
        return self.admission.peers

    @property
    def generation(self) -> int:
        """Counts changes to `peers`, for readers that cache a view of them."""
        return self.admission.generation

    def changed_since(self, generation: int) -> list[str] | None:
        """The keys of the peers accepted or dropped since `generation`, or None if the
        journal does not reach back that far (Admission.changed_since)."""
        return self.admission.changed_since(generation)

    @property
    def rejected(self) -> dict[str, str]:
        """Lease key -> why that peer is not programmed."""
        return self.admission.rejected

    @property
    def tables(self) -> tuple[AnyTable, ...]:
        # set order: L2 before L3, nexthop before the route using it; deletes go in reverse
        r = self.resolver
        if r is None:
            return (self.fdb, self.neigh, self.nexthop, self.route)
        return tuple(t for t in (self.fdb, r.fdb, self.neigh, r.neigh, self.nexthop, self.route)
                     if t is not None)

    @property
    def _l2(self) -> tuple[L2Table, ...]:
        """Who claims a neighbour message: the on-demand answers first (they take only the
        entries that are not permanent), then the permanent tables."""
        return (*(self.resolver.tables if self.resolver else ()), self.fdb, self.neigh)

    # -- what the resolver asks ----------

    def _peer_for(self, p: Peer | None) -> Peer | None:
        return None if p is None or self._direct(p) else p  # direct peers are routed, not asked

    def _owner_mac(self, addr: bytes) -> bytes | None:
        p = self._peer_for(self.admission.owner(addr))
        return p.mac if p is not None else None

    def _mac_ip(self, mac: bytes) -> bytes | None:
        p = self._peer_for(self.admission.by_mac(mac))
        return p.ip_bytes if p is not None else None

    # -- peers (desired state) ----------

    def set_peers(self, peers: Iterable[Peer]) -> None:
        new = {p.key: p for p in peers}
        gone = [k for k in self.peers if k not in new]
        gone += [k for k in self.admission.rejected if k not in new]
        for key in gone:
            self.remove_peer(key)
        held = self.peers
        for key, p in new.items():
            old = held.get(key)
            if old is None or old != p:  # `!=` alone asks p.__eq__(None) first: 20 000 times
                self.add_peer(p)

    def add_peer(self, peer: Peer) -> str | None:
        """Accept (or replace) a peer; returns why it was rejected, if it was."""
        old = self.peers.get(peer.key)
        if old is not None:
            # a replaced peer keeps its nexthop id, so a changed MAC or IP rewrites nothing else
            keep = self.nhids.held(old.gateway) if old.net == peer.net \
                and old.plen == peer.plen and old.version == peer.version else None
            self.remove_peer(peer.key)
            if keep is not None:
                self.nhids.keep(peer.gateway, keep)
        elif peer.key in self.admission.rejected:  # refused before: offered again
            self.admission.remove(peer.key)
        why = self.admission.admit(peer)
        if why is not None:
            return why
        if self.resolver is not None:
            self.resolver.peer_changed(peer.mac)
        return self._install_or_reject(peer) if self._built else None

    def _install_or_reject(self, p: Peer) -> str | None:
        try:
            self._install(p)
        except PeerError as e:  # no nexthop id left: this peer waits, the others do not
            self.remove_peer(p.key)
            return self.admission.reject(p, str(e))
        return None

    def remove_peer(self, key: str) -> None:
        p = self.admission.remove(key)
        if p is None:
            return
        if self.resolver is not None:
            self.resolver.peer_changed(p.mac)
        for table, k, _ in self._entries(p):
            table.delete_desired(k)
        self.nhids.release(p.gateway)

    def _direct(self, p: Peer) -> bool:
        return any(n.holds(p.ip_version, p.ip, BITS[p.ip_version]) for n in self._parents)

    def _entries(self, p: Peer, install: bool = False) -> list[tuple[AnyTable, Any, Any]]:
        """(table, key, value) of each entry an admitted peer needs, as compact keys and values
        (kernel/netlink.py). Derived again when the peer goes rather than kept per peer: a
        peer's keys follow from the peer, the spec and its nexthop id (given out only when
        `install`)."""
        s = self.spec
        gw = p.gateway
        rkey = nl.route_key(gw, p.plen)
        if self._direct(p):
            return [(self.route, rkey, nl.route_value(PROTO_VXNET, oif=s.parent_ifindex,
                                                      gateway=p.ip_bytes))]
        mac = p.mac
        ents: list[tuple[AnyTable, Any, Any]] = [] if s.fdb_on_demand else [
            (self.fdb, mac, p.ip_bytes)]
        if s.neigh_on_demand:  # the network route covers it; the kernel asks for the rest
            return ents
        ents.append((self.neigh, gw, mac))
        if not s.use_nexthops:
            ents.append((self.route, rkey, nl.route_value(PROTO_VXNET, oif=s.ifindex,
                                                          gateway=gw, onlink=True)))
            return ents
        nhid = self.nhids.get(gw, self.nexthop) if install else self.nhids.held(gw)
        if nhid is not None:
            ents += [(self.nexthop, nhid, gw),
                     (self.route, rkey, nl.route_value(PROTO_VXNET, nhid=nhid))]
        return ents

    def _install(self, p: Peer) -> None:
        for table, k, v in self._entries(p, install=True):
            table.set_desired(k, v)

    # -- the kernel ----------

    def resync(self) -> PassResult:
        """A whole full pass at once (see resync_steps)."""
        result = PassResult()
        for _ in self.resync_steps(result):
            pass
        return result

    def apply(self) -> PassResult:
        """A whole pass over the dirty keys at once (see apply_steps)."""
        result = PassResult()
        for _ in self.apply_steps(result):
            pass
        return result

    def resync_steps(self, result: PassResult, chunk: int = CHUNK, keep_extra: bool = False
                     ) -> Iterator[None]:
        """Dump every table, then write only what differs. The first one also builds desired
        state, adopting the nexthop ids an earlier run left, so a restart writes nothing.
        A generator: each step (a dump, a slice of the build, a chunk of writes) is short, and
        an async caller yields to the event loop between steps. keep_extra: see apply_steps."""
        if self.parked:
            return
        t0 = time.perf_counter()
        s = self.spec
        # None: the same dump as last time, with nothing changed since (nothing to file)
        nexthops = self.nexthop.dump(self.kernel, self.nhids.range, fresh_only=self._built) \
            if s.use_nexthops else NexthopDump({}, set())
        if nexthops is not None:
            self.nhids.saw(nexthops, adopt=not self._built)
        yield
        if not self._built:
            self._built = True
            if s.neigh_on_demand and s.network is not None:
                net = s.network
                self.route.set_desired(nl.route_key(net.network_address.packed, net.prefixlen),
                                       nl.route_value(PROTO_VXNET, oif=s.ifindex))
            for n, p in enumerate(list(self.peers.values()), 1):
                if self.peers.get(p.key) is p:  # still wanted after the last yield
                    self._install_or_reject(p)
                if n % chunk == 0:
                    yield
            self._adopting = True
        if nexthops is not None:
            self.nexthop.load(nexthops)
        for family in (nl.AF_BRIDGE, s.family):
            yield
            dump_l2(self.kernel, family, s.ifindex, self._l2)
        yield
        self.route.resync(self.kernel)
        yield from self.apply_steps(result, chunk, keep_extra)
        result.seconds = time.perf_counter() - t0

    def apply_steps(self, result: PassResult, chunk: int = CHUNK, keep_extra: bool = False
                    ) -> Iterator[None]:
        """Write what the dirty keys need, about `chunk` keys per step: sets in table order (L2
        before L3, a nexthop before its route), then deletes in reverse. Each step plans only
        its own keys, so no step is long however many are dirty; a small change (one peer's
        entries) is one step, so nothing else -- the allow-list's nft run, say -- gets in
        between its writes. Keys stay dirty until written: if a step raises (or the caller
        stops) the next pass plans them again.

        keep_extra: sets only, while desired state is still partial (start-up programs the
        listing page by page): what the kernel holds beyond it -- on a restart, the entries
        of peers on pages not read yet, and their nexthop ids, still to be adopted -- stays
        until the first pass without it."""
        if self.parked or not self._built:
            return
        t0 = time.perf_counter()
        if self.resolver is not None:
            self.resolver.recheck()
        if not keep_extra and self._adopting:  # every peer is in: unclaimed ids are not ours
            self._adopting = False
            self.nhids.adopted()
        done = 0  # keys planned since the last step ended
        tables = self.tables
        for deleting, order in ((False, tables), (True, () if keep_extra else tables[::-1])):
            for table in order:
                keys = table.pending_keys(sets_only=keep_extra)
                for at in range(0, len(keys), chunk):
                    if done >= chunk:
                        yield
                        done = 0
                        if self.parked:  # the device went away while we yielded
                            return
                    done += min(chunk, len(keys) - at)
                    sets, dels = table.plan(keys[at:at + chunk])
                    todo = dels if deleting else sets
                    if todo:
                        table.write(self.kernel, todo, deleting, result)
        result.seconds += time.perf_counter() - t0

    @property
    def pending(self) -> bool:
        """Work a pass could do now: keys not yet in step (failed writes, changes made during
        a pass). A parked or not yet built plane has none: its next full pass does it."""
        return self._built and not self.parked and any(t.pending for t in self.tables)

    def rebind(self, ifindex: int, **changes: Any) -> None:
        """Our device was recreated (new ifindex) or its surroundings changed: rebuild desired
        state against it at the next resync. Admitted peers stay (and are checked again by
        whoever changed the rules)."""
        self.spec = replace(self.spec, ifindex=ifindex, **changes)
        self._parents = _parents(self.spec)
        self.admission.rules = self.spec.rules()
        for t in (self.fdb, self.neigh, self.nexthop, self.route):
            t.rebind(ifindex)
        if self.resolver is not None:
            self.resolver.rebind(ifindex)
        self.nhids = NexthopIds(self.spec.family)
        self._built, self._adopting, self.parked = False, False, False

    # -- notifications ----------

    def on_message(self, mtype: int, buf: bytes, off: int, end: int) -> bool:
        """Fold one netlink notification into the kernel caches; True if it touched ours."""
        if mtype in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
            return self.route.on_message(mtype, buf, off, end)
        if mtype == nl.RTM_GETNEIGH:  # the kernel asks (a miss)
            fam, ifindex, _, _, dst, ll = nl.parse_neigh(buf, off, end)
            return (self.resolver is not None and ifindex == self.spec.ifindex
                    and self.resolver.on_miss(fam, dst, ll))
        if mtype in (nl.RTM_NEWNEIGH, nl.RTM_DELNEIGH):
            return notify_l2(self._l2, mtype == nl.RTM_DELNEIGH, buf, off, end)
        if mtype in (nl.RTM_NEWNEXTHOP, nl.RTM_DELNEXTHOP) and self.spec.use_nexthops:
            gone = self.nexthop.on_message(mtype, buf, off, end)
            if gone:
                self.route.nexthop_gone(gone)
            return gone is not None
        return False

    # -- introspection ----------

    def drift(self) -> dict[str, dict[str, list[str]]]:
        out = {}
        for t in self.tables:
            d = t.drift()
            if d:
                out[t.name] = {"missing": d.missing, "wrong": d.wrong, "extra": d.extra}
        return out

    def programmed(self) -> set[str]:
        """Peers whose every entry the kernel holds as wanted (as far as the caches know)."""
        if not self._built:
            return set()
        if not any(t.pending for t in self.tables):  # a key not dirty is in step
            return set(self.peers)
        return {key for key, p in self.peers.items()
                if all(t.in_step(k) for t, k, _ in self._entries(p))}

    @property
    def writes(self) -> dict[str, int]:
        return {t.name: t.writes for t in self.tables}

    def status(self) -> PlaneStatus:
        return PlaneStatus(len(self.peers), len(self.programmed()), self.rejected, self.writes,
                           sum(t.failing for t in self.tables),
                           self.resolver.status() if self.resolver is not None else None)

    def detail(self) -> PlaneDetail:
        return PlaneDetail(self.peers, frozenset(self.programmed()), self.drift())


def _parents(spec: PlaneSpec) -> tuple[Span, ...]:
    """The connected networks whose peers are routed directly (DirectRouting), as integers."""
    return tuple(Span.of(n) for n in spec.parent_networks) if spec.direct_routing else ()

