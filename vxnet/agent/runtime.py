"""The running agent: built whole by start-up (agent/startup.py), then its long-running tasks
under a supervisor. Store events and netlink notifications only change memory; the reconciler
writes the kernel once per drained batch. A stop leaves the kernel and the lease as they are,
so a restart disturbs nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Protocol

from vxnet.agent.iface import ExternalInterface, Selection
from vxnet.agent.options import AgentOptions
from vxnet.agent.supervisor import Supervisor
from vxnet.agent.underlay import UnderlayWatch
from vxnet.cni.netconf import write_conflist
from vxnet.health.checker import HealthChecker, Target
from vxnet.ip import IPAddress
from vxnet.kernel import netlink as nl
from vxnet.kernel.allowlist import AllowList
from vxnet.kernel.device import DeviceSpec, default_name, device_mtu
from vxnet.kernel.links import open_links
from vxnet.kernel.mac import vtep_mac
from vxnet.kernel.masq import MasqRules, Masquerade
from vxnet.kernel.monitor import Monitor
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.peer import Peer
from vxnet.kernel.reconciler import Observer, Reconciler
from vxnet.store.config import NetworkConfig
from vxnet.store.etcd import Etcd
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey
from vxnet.store.manager import LeaseLost, LeaseManager, NodeInfo
from vxnet.store.subnetenv import SubnetEnv
from vxnet.store.watcher import EventKind, LeaseEvent, LeaseWatcher

log = logging.getLogger(__name__)

FOLD_CHUNK = 200  # store events folded into memory per loop turn


class RuntimeObserver(Observer, Protocol):
    """Who hears about the runtime's timings (the metrics): kernel passes, and the loop."""

    def on_loop_lag(self, seconds: float) -> None: ...

    def on_probe(self, path: str, rtt: float | None) -> None: ...


# -- the node's shape, from config, interface and lease (start-up and lease moves share it) ---

def lease_attrs(cfg: NetworkConfig, ext: ExternalInterface, key: SubnetKey) -> LeaseAttrs:
    return LeaseAttrs(ext.ip, vtep_mac(key.subnet) if key.subnet else None, cfg.backend.vni,
                      ext.ip6, vtep_mac(key.subnet6) if key.subnet6 else None)


def device_spec(opts: AgentOptions, cfg: NetworkConfig, ext: ExternalInterface, version: int,
                lease: Lease) -> DeviceSpec:
    subnet = lease.key.subnet if version == 4 else lease.key.subnet6
    local = ext.ip if version == 4 else ext.ip6
    assert subnet is not None and local is not None
    b = cfg.backend
    tx_checksum = b.tx_checksum if opts.tx_checksum_offload is None else opts.tx_checksum_offload
    neigh_on_demand, fdb_on_demand = opts.on_demand(b.neigh_on_demand, b.fdb_on_demand)
    return DeviceSpec(default_name(b.vni, version), b.vni, b.port, local, ext.index,
                      vtep_mac(subnet), device_mtu(b.mtu or ext.mtu, local.version), subnet,
                      b.gbp, b.learning, tx_checksum, l2miss=fdb_on_demand,
                      app_solicit=neigh_on_demand)


async def setup_overlays(sock: nl.RtnlSocket, opts: AgentOptions, cfg: NetworkConfig,
                         ext: ExternalInterface, lease: Lease, overlays: dict[int, Overlay]
                         ) -> bool:
    """Create one VXLAN device per enabled family, or bring existing ones in line with a new
    lease or underlay (address, interface, MTU). True if anything changed."""
    changed = False
    with open_links() as links:
        for version, pool in ((4, cfg.ipv4), (6, cfg.ipv6)):
            if pool is None:
                continue
            spec = device_spec(opts, cfg, ext, version, lease)
            ov = overlays.get(version)
            if ov is None:
                overlays[version] = Overlay(
                    links, sock, spec, network=pool.network,
                    direct_routing=cfg.backend.direct_routing,
                    neigh_on_demand=spec.app_solicit, fdb_on_demand=spec.l2miss)
                changed = True
            elif await ov.follow(links, spec):
                changed = True
    return changed


def write_subnet_env(opts: AgentOptions, cfg: NetworkConfig, lease: Lease,
                     overlays: dict[int, Overlay]) -> None:
    """subnet.env, and the CNI conflist if we keep one: both follow the lease and the MTU."""
    # pods get one MTU for both families: the smaller overlay's, or IPv6 packets sized for
    # the IPv4 overlay would be refused by their own node ("packet too big")
    mtu = min(ov.device.mtu for ov in overlays.values())
    env = SubnetEnv(cfg.ipv4.network if cfg.ipv4 else None, lease.key.subnet, mtu, opts.ip_masq,
                    cfg.ipv6.network if cfg.ipv6 else None, lease.key.subnet6)
    env.write(opts.subnet_file)
    if opts.cni_conf_file and write_conflist(opts.cni_conf_file, env, opts.cni_data_dir):
        log.info("CNI network config %s written (subnet %s, MTU %d)", opts.cni_conf_file,
                 ", ".join(str(s) for s in (env.subnet, env.ipv6_subnet) if s), mtu)


def masquerade_rules(cfg: NetworkConfig, lease: Lease) -> list[MasqRules]:
    return [MasqRules(pool.network, sub) for pool, sub in (
        (cfg.ipv4, lease.key.subnet), (cfg.ipv6, lease.key.subnet6)) if pool and sub]


def peer_of(lease: Lease, version: int) -> Peer | None:
    a = lease.attrs
    if version == 4 and lease.key.subnet and a.vtep_mac and a.public_ip:
        return Peer(str(lease.key), lease.key.subnet, a.public_ip, a.vtep_mac, a.vni)
    if version == 6 and lease.key.subnet6 and a.vtep_mac6 and a.public_ipv6:
        return Peer(str(lease.key), lease.key.subnet6, a.public_ipv6, a.vtep_mac6, a.vni)
    return None


def peer_ips(overlays: dict[int, Overlay]) -> set[IPAddress]:
    """Where VXLAN may come from: the public IPs of the peers we program."""
    return {p.public_ip for ov in overlays.values() for p in ov.plane.peers.values()}


class HealthTargets:
    """What the peer probes aim at: every accepted peer, per family (its VXLAN address is its
    subnet's network address). The checker asks every second; the list is rebuilt only when a
    peer, a device or the refused sources changed (at 5 000 peers a rebuild is ~10 ms)."""

    def __init__(self, overlays: dict[int, Overlay], allow: AllowList | None) -> None:
        self.overlays, self.allow = overlays, allow
        self._seen: object = None
        self._targets: list[Target] = []

    def __call__(self) -> list[Target]:
        refused = frozenset(self.allow.refused_sources) if self.allow is not None else frozenset()
        seen = (refused, tuple((v, id(ov.plane), ov.plane.generation, ov.device.mtu,
                                ov.device.port) for v, ov in self.overlays.items()))
        if seen != self._seen:
            refused_ips = {ip_address(s) for s in refused}
            self._targets = [Target(f"ipv{v} {p.key}", p.subnet.network_address, p.public_ip,
                                    ov.device.mtu, ov.device.port, p.public_ip in refused_ips)
                             for v, ov in self.overlays.items() for p in ov.plane.peers.values()]
            self._seen = seen
        return self._targets


def peers_of(leases: Iterable[Lease], version: int, own: str) -> list[Peer]:
    return [p for lease in leases if str(lease.key) != own
            if (p := peer_of(lease, version)) is not None]


@dataclass(eq=False)
class Runtime:
    opts: AgentOptions
    cfg: NetworkConfig
    selection: Selection
    ext: ExternalInterface  # the underlay as last applied
    etcd: Etcd
    mgr: LeaseManager
    lease: Lease  # the lease devices, subnet.env and masquerade were last set up for
    node_id: int
    sock: nl.RtnlSocket
    overlays: dict[int, Overlay]
    watcher: LeaseWatcher
    reconciler: Reconciler
    monitor: Monitor
    allow: AllowList | None
    masq: Masquerade | None
    observer: RuntimeObserver
    first_sync_writes: int
    health: HealthChecker | None
    invalid: dict[str, str] = field(default_factory=dict)
    invalid_total: int = 0
    supervisor: Supervisor = field(default_factory=Supervisor)
    loop_lag_max: float = 0.0  # the longest the event loop was held, as last measured
    not_ready: str | None = None  # why the node cannot serve now (no usable underlay)
    underlay_changes: int = 0
    published: tuple[IPAddress | None, ...] = ()  # the addresses our lease says we have

    def __post_init__(self) -> None:
        self.published = (self.ext.ip, self.ext.ip6)  # start-up acquired the lease with them

    # -- store events (memory only) ----------

    def note_invalid(self, key: str, reason: str) -> None:
        self.invalid_total += 1
        if self.invalid.get(key) != reason:
            log.warning("skipping lease %s: %s", key, reason)
        self.invalid[key] = reason

    def on_store_event(self, ev: LeaseEvent) -> None:
        """Fold one lease event into every overlay's desired state (no kernel writes here)."""
        if ev.key == str((self.mgr.lease or self.lease).key):
            # any change to our key may be another writer's: the manager compares it with what
            # we wrote and puts ours back (our own writes compare equal and cost one read)
            self.mgr.check_soon()
            return
        if ev.kind is EventKind.INVALID:
            self.note_invalid(ev.key, ev.error.reason if ev.error else "invalid")
        else:
            self.invalid.pop(ev.key, None)
        for version, ov in self.overlays.items():
            p = peer_of(ev.lease, version) if ev.lease and ev.kind in (
                EventKind.ADDED, EventKind.CHANGED) else None
            if p is None:
                ov.plane.remove_peer(ev.key)
            else:
                ov.plane.add_peer(p)

    def _changed(self, event_at: float | None = None) -> None:
        """Desired peer state changed: let the writers do their part, once per batch."""
        self.reconciler.kick(event_at)
        if self.allow is not None:
            self.allow.changed()

    # -- long-running tasks ----------

    async def _watch(self) -> None:
        async for batch in self.watcher.batches():
            arrived = time.perf_counter()
            for n, ev in enumerate(batch, 1):
                self.on_store_event(ev)
                if n % FOLD_CHUNK == 0:
                    await asyncio.sleep(0)  # a re-list of 20 000 changes must not hog the loop
            self._changed(arrived)

    async def _keepalive(self) -> None:
        await self._follow_lease()  # a move a failed earlier run of this task did not finish
        await self.mgr.keepalive(self.cfg, self._lease_lost)

    async def _lease_lost(self, ev: LeaseLost) -> None:
        if ev.new.key == ev.old.key:
            log.warning("lease %s re-acquired after loss (%s)", ev.new.key, ev.reason)
        else:
            log.error("lease %s lost (%s); now %s: moving devices and subnet.env", ev.old.key,
                      ev.reason, ev.new.key)
        await self._follow_lease()

    async def _follow_lease(self) -> None:
        lease = self.mgr.lease
        if lease is None or lease.key == self.lease.key:
            return
        await setup_overlays(self.sock, self.opts, self.cfg, self.ext, lease, self.overlays)
        write_subnet_env(self.opts, self.cfg, lease, self.overlays)
        if self.masq is not None:
            self.masq.rules = masquerade_rules(self.cfg, lease)
            await self.masq.apply()
        self.lease = lease
        self._replan("resync")

    def _replan(self, why: str) -> None:
        """Devices were rebuilt: every peer checked again against the new surroundings."""
        for version, ov in self.overlays.items():
            ov.plane.set_peers([])
            ov.plane.set_peers(peers_of(self.watcher.leases.values(), version,
                                        str(self.lease.key)))
        self.reconciler.request_resync(why)
        self._changed()

    async def follow_underlay(self, ext: ExternalInterface | None, why: str) -> None:
        """Apply what the underlay watch found: a new address is published in our lease (same
        key, same etcd lease; peers re-point their FDB from the lease event) and the devices
        follow it, as they follow a new interface or MTU. With nothing usable the node keeps
        its last state and says it is not ready. Idempotent: called on every look."""
        if ext is None:
            if self.not_ready != why:
                log.error("no usable external interface (%s): keeping the last state", why)
            self.not_ready = why
            return
        if ext != self.ext:
            log.warning("external interface now %s (index %d, MTU %d), public IP %s%s; was "
                        "%s, %s%s", ext.name, ext.index, ext.mtu, ext.ip,
                        f", {ext.ip6}" if ext.ip6 else "", self.ext.name, self.ext.ip,
                        f", MTU {self.ext.mtu}" if self.ext.mtu != ext.mtu else "")
            self.underlay_changes += 1
        cfg = self.cfg
        # the node's own side first (it needs no etcd), then the lease, which may have to wait
        # for etcd to be reachable from the new address (StoreUnavailable: tried again soon)
        if await setup_overlays(self.sock, self.opts, cfg, ext, self.lease, self.overlays):
            write_subnet_env(self.opts, cfg, self.lease, self.overlays)
            self._replan("underlay")
        if (ext.ip, ext.ip6) != (self.ext.ip, self.ext.ip6):
            await self.etcd.reconnect()  # its connection left from an address we no longer have
        self.ext = ext
        if (ext.ip, ext.ip6) != self.published:  # only then: this runs on every look
            await self.mgr.move(NodeInfo(self.opts.node_name, ext.ip, ext.ip6),
                                lambda key: lease_attrs(cfg, ext, key))
            self.published = (ext.ip, ext.ip6)  # not before: a failed publish is retried
        if self.not_ready is not None:
            log.info("external interface usable again: ready")
        self.not_ready = None

    async def _measure_loop_lag(self, every: float = 0.05) -> None:
        """How late a short sleep wakes up is how long someone else held the event loop."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(every)
            lag = max(0.0, time.perf_counter() - t0 - every)
            self.loop_lag_max = max(self.loop_lag_max, lag)
            self.observer.on_loop_lag(lag)

    async def run(self) -> None:
        """Every long-running task, supervised, until cancelled (SIGTERM/SIGINT)."""
        sup, opts = self.supervisor, self.opts
        sup.start("looplag", self._measure_loop_lag)
        sup.start("reconciler", self.reconciler.run)
        sup.start("monitor", self.monitor.run)
        sup.start("watch", self._watch)
        sup.start("keepalive", self._keepalive)
        sup.start("underlay", UnderlayWatch(self.selection, self.cfg.ipv4 is not None,
                                            self.cfg.ipv6 is not None, self.follow_underlay,
                                            interval=opts.resync_interval).run)
        allow, masq = self.allow, self.masq
        if allow is not None:
            sup.start("allowlist", lambda: allow.run(opts.resync_interval))
        if masq is not None:
            sup.start("masquerade", lambda: masq.keep(min(opts.resync_interval, 5.0)))
        if self.health is not None:
            sup.start("health", self.health.run)
        try:
            await sup.wait()
        finally:
            await sup.stop()
            await self.etcd.close()
            self.sock.close()
