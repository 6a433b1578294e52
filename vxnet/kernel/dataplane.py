"""Peer state for one overlay family on one VXLAN device: what the kernel must hold per peer,
what of the kernel's is ours, and the order writes go in.

Per remote peer: FDB `<peer VTEP MAC> -> <peer public IP>`, permanent neighbour `<peer .0> ->
<peer VTEP MAC>`, and a route to the peer's subnet via its .0, onlink -- through a nexthop object
when the kernel has them (inserts stay O(1) at 20k peers), else a plain gateway route. With
DirectRouting and a peer on our parent's own subnet: only a route via its public IP there.

With on-demand neighbours (kernel/resolver.py): one route for the whole pod network through the
device instead of a route and a neighbour per peer; the kernel asks for each remote pod's MAC.
With on-demand FDB as well, even the per-peer FDB entry waits until the kernel asks for it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from vxnet.ip import IPAddress, IPNetwork
from vxnet.kernel import netlink as nl
from vxnet.kernel.peer import Peer, PeerError, SubnetSpace, check_peer
from vxnet.kernel.resolver import MissResolver
from vxnet.kernel.table import DeltaTable, Op

log = logging.getLogger(__name__)

PROTO_VXNET = 118  # our route/nexthop protocol number (free in iproute2's rt_protos)
_NH_BASE = {nl.AF_INET: 0x76780000, nl.AF_INET6: 0x76790000}
_NH_SPAN = 0x10000
CHUNK = 1000  # requests (or peers built) per step: a few ms each, so the loop stays fair
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)  # deleting what is already gone is success


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


@dataclass(slots=True)
class PassResult:
    writes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.writes.values())


def _hex(b: bytes) -> str:
    return b.hex(":") if len(b) == 6 else str(ipaddress.ip_address(b))


class Dataplane:
    def __init__(self, sock: nl.RtnlSocket, spec: PlaneSpec) -> None:
        self.sock, self.spec = sock, spec
        self.fdb: DeltaTable[nl.FdbKey, bytes] = DeltaTable(
            "fdb", nl.fdb_set, nl.fdb_del, lambda k: k.mac.hex(":"))
        self.neigh: DeltaTable[nl.NeighKey, bytes] = DeltaTable(
            "neigh", nl.neigh_set, nl.neigh_del, lambda k: _hex(k.dst))
        self.nexthop: DeltaTable[int, nl.Nexthop] = DeltaTable(
            "nexthop", nl.nexthop_set, nl.nexthop_del, str)
        self.route: DeltaTable[nl.RouteKey, nl.Route] = DeltaTable(
            "route", nl.route_set, nl.route_del, lambda k: f"{_hex(k.dst)}/{k.dst_len}")
        self.peers: dict[str, Peer] = {}
        self.generation = 0  # counts changes to `peers`, for readers that cache a view of them
        self.rejected: dict[str, str] = {}
        self.parked = False
        self._space = SubnetSpace()
        self._macs: dict[str, str] = {}
        # a peer's entries as a flat (table, key, table, key...) tuple: a list of pairs cost
        # three times as much per peer (4 MiB at 20 000 peers)
        self._entries: dict[str, tuple[Any, ...]] = {}
        self._nh_ids: dict[bytes, int] = {}  # gateway -> nexthop id
        self._adopt: dict[bytes, int] = {}  # ids found in the kernel, taken over on first build
        self._foreign_nh: set[int] = set()
        self._next_nh = _NH_BASE[spec.family]
        self._built = False
        self._failing: dict[tuple[str, Any], str] = {}  # (table, key) -> last error
        self.resolver = MissResolver(
            spec.family, spec.ifindex, neighbours=spec.neigh_on_demand, fdb=spec.fdb_on_demand,
            owner_mac=self._owner_mac, mac_ip=self._mac_ip,
        ) if spec.neigh_on_demand or spec.fdb_on_demand else None

    @property
    def tables(self) -> tuple[DeltaTable[Any, Any], ...]:
        # set order: L2 before L3, nexthop before the route using it; deletes go in reverse
        r = self.resolver
        if r is None:
            return (self.fdb, self.neigh, self.nexthop, self.route)
        return tuple(t for t in (self.fdb, r.fdb, self.neigh, r.neigh, self.nexthop, self.route)
                     if t is not None)

    # -- what the resolver asks ----------

    def _peer_for(self, key: str | None) -> Peer | None:
        p = self.peers.get(key) if key is not None else None
        return None if p is None or self._direct(p) else p  # direct peers are routed, not asked

    def _owner_mac(self, addr: bytes) -> bytes | None:
        p = self._peer_for(self._space.owner(self.spec.version, int.from_bytes(addr)))
        return p.mac_bytes if p is not None else None

    def _mac_ip(self, mac: bytes) -> bytes | None:
        p = self._peer_for(self._macs.get(mac.hex(":")))
        return p.public_ip.packed if p is not None else None

    # -- peers (desired state) ----------

    def set_peers(self, peers: Iterable[Peer]) -> None:
        new = {p.key: p for p in peers}
        for key in [k for k in self.peers if k not in new] + [k for k in self.rejected
                                                               if k not in new]:
            self.remove_peer(key)
        for p in new.values():
            if self.peers.get(p.key) != p:
                self.add_peer(p)

    def add_peer(self, peer: Peer) -> str | None:
        """Accept (or replace) a peer; returns why it was rejected, if it was."""
        old = self.peers.get(peer.key)
        # a replaced peer keeps its nexthop id, so a changed MAC or IP rewrites nothing else
        keep_nh = old and self._nh_ids.get(old.subnet.network_address.packed)
        self.remove_peer(peer.key)
        if keep_nh and old.subnet == peer.subnet:
            self._nh_ids[peer.subnet.network_address.packed] = keep_nh
        s = self.spec
        try:
            p = check_peer(peer, overlay_version=s.version, underlay_version=s.underlay_version,
                           local=s.local_subnet, network=s.network, vni=s.vni,
                          own_ips=s.own_ips)
            other = self._space.conflict(p.subnet)
            if other is not None:
                raise PeerError(f"peer {p.key}: subnet {p.subnet} overlaps peer {other}")
            if p.vtep_mac in self._macs:
                raise PeerError(f"peer {p.key}: VTEP MAC {p.vtep_mac} is already peer "
                                f"{self._macs[p.vtep_mac]}'s")
        except PeerError as e:
            return self._reject(peer.key, e)
        self.peers[p.key] = p
        self.generation += 1
        self._space.add(p.subnet, p.key)
        self._macs[p.vtep_mac] = p.key
        if self.resolver is not None:
            self.resolver.peer_changed(p.mac_bytes)
        return self._install_or_reject(p) if self._built else None

    def _reject(self, key: str, e: PeerError) -> str:
        if self.rejected.get(key) != str(e):
            log.warning("skipping %s", e)
        self.rejected[key] = str(e)
        return str(e)

    def _install_or_reject(self, p: Peer) -> str | None:
        try:
            self._install(p)
        except PeerError as e:  # no nexthop id left: this peer waits, the others do not
            self.remove_peer(p.key)
            return self._reject(p.key, e)
        return None

    def remove_peer(self, key: str) -> None:
        self.rejected.pop(key, None)
        p = self.peers.pop(key, None)
        if p is None:
            return
        self.generation += 1
        self._space.remove(p.subnet)
        self._macs.pop(p.vtep_mac, None)
        if self.resolver is not None:
            self.resolver.peer_changed(p.mac_bytes)
        for table, k in _pairs(self._entries.pop(key, ())):
            table.delete_desired(k)
            self._failing.pop((table.name, k), None)
            if table is self.nexthop:
                self._nh_ids.pop(p.subnet.network_address.packed, None)

    def _direct(self, p: Peer) -> bool:
        return self.spec.direct_routing and any(p.public_ip in n for n in
                                                self.spec.parent_networks)

    def _install(self, p: Peer) -> None:
        s = self.spec
        gw = p.subnet.network_address.packed
        rkey = nl.RouteKey(s.family, gw, p.subnet.prefixlen)
        ents: list[tuple[DeltaTable[Any, Any], Any, Any]]
        if self._direct(p):
            ents = [(self.route, rkey, nl.Route(PROTO_VXNET, oif=s.parent_ifindex,
                                                gateway=p.public_ip.packed))]
        elif s.neigh_on_demand:  # the network route covers it; the kernel asks for the rest
            ents = [] if s.fdb_on_demand else [
                (self.fdb, nl.FdbKey(s.ifindex, p.mac_bytes), p.public_ip.packed)]
        else:
            mac = p.mac_bytes
            ents = [] if s.fdb_on_demand else [
                (self.fdb, nl.FdbKey(s.ifindex, mac), p.public_ip.packed)]
            ents.append((self.neigh, nl.NeighKey(s.family, s.ifindex, gw), mac))
            if s.use_nexthops:
                nhid = self._nh_id(gw)
                ents += [(self.nexthop, nhid, nl.Nexthop(s.family, s.ifindex, gw, True,
                                                         PROTO_VXNET)),
                         (self.route, rkey, nl.Route(PROTO_VXNET, nhid=nhid))]
            else:
                ents.append((self.route, rkey, nl.Route(PROTO_VXNET, oif=s.ifindex, gateway=gw,
                                                        onlink=True)))
        for table, k, v in ents:
            table.set_desired(k, v)
        self._entries[p.key] = tuple(x for t, k, _ in ents for x in (t, k))

    def _nh_id(self, gw: bytes) -> int:
        if gw in self._nh_ids:
            return self._nh_ids[gw]
        nhid = self._adopt.pop(gw, None)
        if nhid is None or nhid in self.nexthop.desired:
            base = _NH_BASE[self.spec.family]
            for _ in range(_NH_SPAN):
                nhid, self._next_nh = self._next_nh, base + (self._next_nh + 1 - base) % _NH_SPAN
                if (nhid not in self.nexthop.desired and nhid not in self.nexthop.kernel
                        and nhid not in self._foreign_nh):
                    break
            else:
                raise PeerError(f"no free nexthop id left in {base:#x}+{_NH_SPAN}")
        self._nh_ids[gw] = nhid
        return nhid

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

    def resync_steps(self, result: PassResult, chunk: int = CHUNK) -> Iterator[None]:
        """Dump every table, then write only what differs. The first one also builds desired
        state, adopting the nexthop ids an earlier run left, so a restart writes nothing.
        A generator: each step (a dump, a slice of the build, a chunk of writes) is short, and
        an async caller yields to the event loop between steps."""
        if self.parked:
            return
        t0 = time.perf_counter()
        nexthops = self._dump_nexthops() if self.spec.use_nexthops else {}
        yield
        if not self._built:
            self._adopt = {}
            for nhid, nh in sorted(nexthops.items()):
                self._adopt.setdefault(nh.gateway, nhid)
            self._built = True
            if self.spec.neigh_on_demand and self.spec.network is not None:
                net = self.spec.network
                self.route.set_desired(
                    nl.RouteKey(self.spec.family, net.network_address.packed, net.prefixlen),
                    nl.Route(PROTO_VXNET, oif=self.spec.ifindex))
            for n, p in enumerate(list(self.peers.values()), 1):
                if self.peers.get(p.key) is p:  # still wanted after the last yield
                    self._install_or_reject(p)
                if n % chunk == 0:
                    yield
            self._adopt = {}
        self.nexthop.load_kernel(nexthops)
        for family in (nl.AF_BRIDGE, self.spec.family):
            yield
            for table, entries in self._dump_l2(family).items():
                if self.resolver is not None and table in self.resolver.tables:
                    self.resolver.load(table, entries)
                else:
                    table.load_kernel(entries)
        yield
        self.route.load_kernel(self._dump_routes())
        yield from self.apply_steps(result, chunk)
        result.seconds = time.perf_counter() - t0

    def apply_steps(self, result: PassResult, chunk: int = CHUNK) -> Iterator[None]:
        """Write what the dirty keys need, about `chunk` keys per step: sets in table order (L2
        before L3, a nexthop before its route), then deletes in reverse. Each step plans only
        its own keys, so no step is long however many are dirty; a small change (one peer's
        entries) is one step, so nothing else -- the allow-list's nft run, say -- gets in
        between its writes. Keys stay dirty until written: if a step raises (or the caller
        stops) the next pass plans them again."""
        if self.parked or not self._built:
            return
        t0 = time.perf_counter()
        if self.resolver is not None:
            self.resolver.recheck()
        done = 0  # keys planned since the last step ended
        for deleting, tables in ((False, self.tables), (True, self.tables[::-1])):
            for table in tables:
                keys = list(table.dirty)
                for at in range(0, len(keys), chunk):
                    if done >= chunk:
                        yield
                        done = 0
                        if self.parked:  # the device went away while we yielded
                            return
                    done += min(chunk, len(keys) - at)
                    sets, dels = table.plan(keys[at:at + chunk])
                    ops = dels if deleting else sets
                    if ops:
                        self._write(ops, result)
        result.seconds += time.perf_counter() - t0

    def _write(self, ops: list[Op[Any, Any]], result: PassResult) -> None:
        """One table's planned ops (all sets or all deletes), written in one batch."""
        table = ops[0].table
        encode = table.encode_del if ops[0].delete else table.encode_set
        failures = self.sock.batch((op, encode(op.key, op.value)) for op in ops)
        if not failures:  # the common case, recorded in bulk
            table.record_all(ops)
            result.writes[table.name] += len(ops)
            if self._failing:
                for op in ops:
                    self._failing.pop((table.name, op.key), None)
            return
        failed = {id(f.entry): f.error for f in failures}
        for op in ops:
            err = failed.get(id(op))
            ok = err is None or (op.delete and err.errno in _GONE)
            op.table.record(op, ok)
            if ok:
                result.writes[op.table.name] += 1
                self._failing.pop((op.table.name, op.key), None)
            else:
                result.failures.append(str(err))
                if self._failing.get((op.table.name, op.key)) != str(err):
                    log.warning("kernel write failed: %s", err)  # once per entry and error
                self._failing[(op.table.name, op.key)] = str(err)

    @property
    def pending(self) -> bool:
        """Work a pass could do now: keys not yet in step (failed writes, changes made during
        a pass). A parked or not yet built plane has none: its next full pass does it."""
        return self._built and not self.parked and any(t.dirty for t in self.tables)

    def rebind(self, ifindex: int, **changes: Any) -> None:
        """Our device was recreated (new ifindex) or its surroundings changed: rebuild desired
        state against it at the next resync."""
        self.spec = replace(self.spec, ifindex=ifindex, **changes)
        for t in self.tables:
            t.desired, t.kernel, t.dirty = {}, {}, set()
        if self.resolver is not None:
            self.resolver.ifindex = ifindex
        self._entries, self._nh_ids, self._built, self.parked = {}, {}, False, False
        self._next_nh = _NH_BASE[self.spec.family]

    # -- dumps, each keeping only what is ours ----------

    def _owns_route(self, table: int, key: nl.RouteKey, r: nl.Route) -> bool:
        return table == nl.RT_TABLE_MAIN and key.family == self.spec.family and (
            r.protocol == PROTO_VXNET
            or (r.oif == self.spec.ifindex and r.protocol == nl.RTPROT_BOOT))

    def _dump_routes(self) -> dict[nl.RouteKey, nl.Route]:
        out, owns, parse = {}, self._owns_route, nl.parse_route
        for buf, off, end in self.sock.dump(nl.RTM_GETROUTE,
                                            nl.route_dump_request(self.spec.family)):
            r = parse(buf, off, end)
            if r is not None and owns(r[0], r[1], r[2]):
                out[r[1]] = r[2]
        return out

    def _neigh_value(self, fam: int, ifindex: int, state: int, flags: int, dst: bytes | None,
                     mac: bytes | None) -> tuple[DeltaTable[Any, Any], Any, Any] | None:
        """(table, key, value-or-None) for a neighbour message on our device, else None."""
        if ifindex != self.spec.ifindex or dst is None:
            return None
        if fam == nl.AF_BRIDGE and (mac is None or mac == bytes(6)):
            return None  # flood entries are not ours
        r = self.resolver
        if r is not None and (answered := r.table_for(fam, state)) is not None:
            if fam == nl.AF_BRIDGE and mac is not None:
                return answered, nl.FdbKey(ifindex, mac), r.value(state, dst)
            return answered, nl.NeighKey(fam, ifindex, dst), r.value(state, mac)
        permanent = state & nl.NUD_PERMANENT
        if fam == nl.AF_BRIDGE:
            ok = permanent and flags & nl.NTF_SELF
            return self.fdb, nl.FdbKey(ifindex, mac), dst if ok else None
        if fam == self.spec.family:
            # a deleted neighbour is reported without its MAC (first as FAILED, then gone)
            return self.neigh, nl.NeighKey(fam, ifindex, dst), mac if permanent and mac else None
        return None

    def _dump_l2(self, family: int) -> dict[DeltaTable[Any, Any], dict[Any, bytes]]:
        """FDB (AF_BRIDGE) or neighbour entries on our device, per table that keeps them."""
        r = self.resolver
        ours = [self.fdb, r and r.fdb] if family == nl.AF_BRIDGE else [self.neigh, r and r.neigh]
        out: dict[DeltaTable[Any, Any], dict[Any, bytes]] = {t: {} for t in ours if t}
        for buf, off, end in self.sock.dump(nl.RTM_GETNEIGH,
                                            nl.neigh_dump_request(family, self.spec.ifindex)):
            got = self._neigh_value(*nl.parse_neigh(buf, off, end))
            if got is not None and got[2] is not None and got[0] in out:
                out[got[0]].setdefault(got[1], got[2])
        return out

    def _dump_nexthops(self) -> dict[int, nl.Nexthop]:
        out, self._foreign_nh = {}, set()
        for buf, off, end in self.sock.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request()):
            got = nl.parse_nexthop(buf, off, end)
            if got is None:
                continue
            nhid, nh = got
            if nh.protocol == PROTO_VXNET and nh.oif == self.spec.ifindex:
                out[nhid] = nh
            elif not (_NH_BASE[self.spec.family] <= nhid < _NH_BASE[self.spec.family] + _NH_SPAN
                      and nh.protocol == PROTO_VXNET):
                self._foreign_nh.add(nhid)
        return out

    # -- notifications ----------

    def on_message(self, mtype: int, buf: bytes, off: int, end: int) -> bool:
        """Fold one netlink notification into the kernel caches; True if it touched ours."""
        if mtype in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
            r = nl.parse_route(buf, off, end)
            if r is None or r[0] != nl.RT_TABLE_MAIN or r[1].family != self.spec.family:
                return False
            _, key, value = r
            if mtype == nl.RTM_DELROUTE:
                if self.route.kernel.get(key) != value:
                    return False
                self.route.kernel_changed(key, None)
            elif self._owns_route(*r):
                self.route.kernel_changed(key, value)
            elif key in self.route.desired:  # someone else's route took our key
                self.route.kernel_changed(key, None)
            else:
                return False
            return True
        if mtype == nl.RTM_GETNEIGH:  # the kernel asks (a miss)
            fam, ifindex, _, _, dst, ll = nl.parse_neigh(buf, off, end)
            return (self.resolver is not None and ifindex == self.spec.ifindex
                    and self.resolver.on_miss(fam, dst, ll))
        if mtype in (nl.RTM_NEWNEIGH, nl.RTM_DELNEIGH):
            got = self._neigh_value(*nl.parse_neigh(buf, off, end))
            if got is None:
                return False
            table, key, value = got
            if self.resolver is not None and table in self.resolver.tables:
                self.resolver.seen(table, key, None if mtype == nl.RTM_DELNEIGH else value)
                return True
            if mtype == nl.RTM_DELNEIGH:
                if table.kernel.get(key) != value and table is self.fdb:
                    return False  # another remote of the same MAC went
                value = None
            table.kernel_changed(key, value)
            return True
        if mtype in (nl.RTM_NEWNEXTHOP, nl.RTM_DELNEXTHOP) and self.spec.use_nexthops:
            got = nl.parse_nexthop(buf, off, end)
            if got is None:
                return False
            nhid, nh = got
            if nhid not in self.nexthop.desired and nhid not in self.nexthop.kernel:
                return False
            ours = nh.protocol == PROTO_VXNET and nh.oif == self.spec.ifindex
            if mtype == nl.RTM_DELNEXTHOP or not ours:
                self.nexthop.kernel_changed(nhid, None)
                # the kernel drops routes using a deleted nexthop without telling anyone
                for k, v in list(self.route.kernel.items()):
                    if v.nhid == nhid:
                        self.route.kernel_changed(k, None)
            else:
                self.nexthop.kernel_changed(nhid, nh)
            return True
        return False

    # -- introspection ----------

    def drift(self) -> dict[str, dict[str, list[str]]]:
        out = {}
        for t in self.tables:
            missing, wrong, extra = t.drift()
            if missing or wrong or extra:
                out[t.name] = {"missing": [t.show(k) for k in missing],
                               "wrong": [t.show(k) for k in wrong],
                               "extra": [t.show(k) for k in extra]}
        return out

    def programmed(self) -> set[str]:
        """Peers whose every entry the kernel holds as wanted (as far as the caches know)."""
        return {key for key, ents in self._entries.items()
                if all(t.kernel.get(k) == t.desired.get(k) for t, k in _pairs(ents))}

    @property
    def writes(self) -> dict[str, int]:
        return {t.name: t.writes for t in self.tables}


def _pairs(flat: tuple[Any, ...]) -> Iterator[tuple[Any, Any]]:
    it = iter(flat)
    return zip(it, it, strict=True)
