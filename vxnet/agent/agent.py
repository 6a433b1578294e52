"""`vxnet agent`: one asyncio loop joining the store (leases in etcd) and the kernel (devices and
peer state). Start-up order: config -> external interface -> lease -> devices -> subnet.env ->
snapshot -> first full sync (the first kernel write of peer state) -> ready -> watch, monitor,
periodic resync and lease keepalive. A stop leaves the kernel and the lease as they are, so a
restart disturbs nothing."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vxnet.agent.iface import ExternalInterface, find_external
from vxnet.backoff import Backoff
from vxnet.errors import StoreUnavailable, SubnetEnvError, VxnetError
from vxnet.ip import IPAddress
from vxnet.kernel import netlink as nl
from vxnet.kernel import nft
from vxnet.kernel.allowlist import AllowList
from vxnet.kernel.dataplane import PassResult
from vxnet.kernel.device import DeviceSpec, default_name, device_mtu, ensure_device, iproute
from vxnet.kernel.mac import vtep_mac
from vxnet.kernel.masq import MasqRules, Masquerade
from vxnet.kernel.monitor import Monitor
from vxnet.kernel.overlay import Overlay, open_overlay
from vxnet.kernel.peer import Peer
from vxnet.store.config import NetworkConfig
from vxnet.store.etcd import Etcd, TLSFiles, credentials
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey
from vxnet.store.manager import DEFAULT_TTL, LeaseLost, LeaseManager, NodeInfo, read_config
from vxnet.store.nodeid import check_node_name, node_id
from vxnet.store.paths import DEFAULT_PREFIX, Paths
from vxnet.store.subnetenv import SubnetEnv
from vxnet.store.watcher import EventKind, LeaseEvent, LeaseWatcher

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AgentOptions:
    etcd_endpoints: str = "http://127.0.0.1:2379"
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_cafile: str | None = None
    etcd_certfile: str | None = None
    etcd_keyfile: str | None = None
    etcd_username: str | None = None
    etcd_password: str | None = None
    etcd_timeout: float = 5.0
    iface: str | None = None
    public_ip: str | None = None
    public_ipv6: str | None = None
    subnet_file: str = "/run/flannel/subnet.env"
    ip_masq: bool = False
    healthz_ip: str = "127.0.0.1"
    healthz_port: int = 10280
    subnet_lease_renew_margin: int = 60  # minutes, as flanneld
    subnet_lease_ttl: int = DEFAULT_TTL  # seconds
    node_name: str = field(default_factory=socket.gethostname)
    resync_interval: float = 30.0
    vxlan_allowlist: bool = True


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        check_node_name(opts.node_name)
        self.paths = Paths(opts.etcd_prefix)
        self.etcd = Etcd(opts.etcd_endpoints, timeout=opts.etcd_timeout,
                         tls=TLSFiles(opts.etcd_cafile, opts.etcd_certfile, opts.etcd_keyfile),
                         auth=credentials(opts.etcd_username, opts.etcd_password))
        self.started = time.monotonic()
        self.ready = asyncio.Event()
        self.cfg: NetworkConfig | None = None
        self.ext: ExternalInterface | None = None
        self.mgr: LeaseManager | None = None
        self.node_id: int | None = None
        self.overlays: dict[int, Overlay] = {}
        self.watcher = LeaseWatcher(self.etcd, self.paths)
        self.monitor: Monitor | None = None
        self.sock: nl.RtnlSocket | None = None
        self.masq: Masquerade | None = None
        self.allow: AllowList | None = None
        self.first_sync_writes: int | None = None
        self.invalid: dict[str, str] = {}
        self.invalid_total = 0
        # hooks the metrics module fills in (kept out of here so the agent has no Prometheus)
        self.on_pass: Callable[[int, str, PassResult], None] = lambda v, kind, r: None
        self.on_event_latency: Callable[[float], None] = lambda seconds: None

    @property
    def lease(self) -> Lease | None:
        return self.mgr.lease if self.mgr else None

    # -- start-up ----------

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Store calls at start-up: an unreachable etcd is retried, never fatal."""
        backoff = Backoff(0.2, 10)
        while True:
            try:
                return await fn()
            except StoreUnavailable as e:
                delay = backoff.next_delay()
                log.warning("%s: %s; retrying in %.1fs", what, e, delay)
                await asyncio.sleep(delay)

    async def start(self) -> None:
        # Start-up allocates tens of objects per peer (leases, peers, table entries), nearly all
        # long-lived: with the cyclic GC paused they are not rescanned over and over, and frozen
        # afterwards they stay out of every later collection, so resyncs stay cheap.
        gc.disable()
        try:
            await self._start()
        finally:
            gc.enable()
        gc.freeze()

    async def _start(self) -> None:
        opts = self.opts
        self.cfg = cfg = await self._retry("reading the network config",
                                           lambda: read_config(self.etcd, self.paths))
        for w in cfg.warnings:
            log.warning("network config: %s", w)
        async with iproute() as ipr:
            self.ext = await find_external(ipr, opts.iface, opts.public_ip, cfg.enable_ipv4,
                                           cfg.enable_ipv6, opts.public_ipv6)
        ext = self.ext
        log.info("external interface %s (index %d, MTU %d), public IP %s%s", ext.name, ext.index,
                 ext.mtu, ext.ip, f", {ext.ip6}" if ext.ip6 else "")
        self.mgr = LeaseManager(
            self.etcd, self.paths, NodeInfo(opts.node_name, ext.ip, ext.ip6),  # type: ignore[arg-type]
            self._attrs_for, ttl=opts.subnet_lease_ttl,
            renew_margin=opts.subnet_lease_renew_margin * 60)
        prefer = self._previous_subnet()
        lease = await self._retry("acquiring a subnet lease",
                                  lambda: self.mgr.acquire(cfg, prefer))  # type: ignore[union-attr]
        self.node_id = await self._retry("allocating a node ID", lambda: node_id(
            self.etcd, self.paths, opts.node_name))
        log.info("lease %s (node ID %d)", lease.key, self.node_id)
        if opts.vxlan_allowlist:  # in place before our device can receive anything
            if not nft.available():
                raise VxnetError("the VXLAN allow-list needs nft (Debian: nftables); install it "
                                 "or turn the allow-list off with --no-vxlan-allowlist")
            self.allow = AllowList(cfg.backend.port, self._peer_ips)
            await self.allow.ensure_table()
        self.sock = nl.RtnlSocket()
        await self._setup_overlays(lease)
        self._write_subnet_env(lease)
        await self._masquerade(lease)
        # The acquire's own listing is the snapshot: the watch resumes from its revision, so
        # nothing after it is missed (our own write included, and skipped as ours).
        assert self.mgr.last_snapshot is not None
        snap = self.watcher.adopt(self.mgr.last_snapshot)
        for key, err in snap.invalid.items():
            self._invalid(key, str(err))
        # Subscribe to netlink before the first sync, so no change after it goes unseen.
        self.monitor = Monitor(list(self.overlays.values()),
                               resync_interval=opts.resync_interval, on_pass=self._monitor_pass)
        writes = 0
        for version, ov in self.overlays.items():
            ov.plane.set_peers(self._peers(snap.leases.values(), version))
        if self.allow is not None:  # peers' packets are let in before we send them any
            await self.allow.sync(full=True)
        for version, ov in self.overlays.items():
            result = ov.plane.resync()
            self.on_pass(version, "first", result)
            writes += result.total
        self.first_sync_writes = writes
        log.info("first sync: %d peers, %d kernel writes; ready",
                 sum(len(ov.plane.peers) for ov in self.overlays.values()), writes)
        self.ready.set()

    def _previous_subnet(self) -> SubnetKey | None:
        try:
            env = SubnetEnv.read(self.opts.subnet_file)
        except SubnetEnvError as e:
            log.info("no previous subnet to prefer (%s)", e)
            return None
        return SubnetKey(env.subnet, env.ipv6_subnet)  # type: ignore[arg-type]

    def _attrs_for(self, key: SubnetKey) -> LeaseAttrs:
        assert self.ext is not None and self.cfg is not None
        return LeaseAttrs(self.ext.ip, vtep_mac(key.subnet) if key.subnet else None,  # type: ignore[arg-type]
                          self.cfg.backend.vni, self.ext.ip6,  # type: ignore[arg-type]
                          vtep_mac(key.subnet6) if key.subnet6 else None)

    def _device_spec(self, version: int, lease: Lease) -> DeviceSpec:
        cfg, ext = self.cfg, self.ext
        assert cfg is not None and ext is not None
        subnet = lease.key.subnet if version == 4 else lease.key.subnet6
        local = ext.ip if version == 4 else ext.ip6
        assert subnet is not None and local is not None
        b = cfg.backend
        return DeviceSpec(default_name(b.vni, version), b.vni, b.port, local, ext.index,
                          vtep_mac(subnet), device_mtu(b.mtu or ext.mtu, local.version), subnet,
                          b.gbp, b.learning)

    async def _setup_overlays(self, lease: Lease) -> None:
        cfg = self.cfg
        assert cfg is not None and self.sock is not None
        async with iproute() as ipr:
            for version, pool in ((4, cfg.ipv4), (6, cfg.ipv6)):
                if pool is None:
                    continue
                spec = self._device_spec(version, lease)
                ov = self.overlays.get(version)
                if ov is None:
                    self.overlays[version] = await open_overlay(
                        ipr, self.sock, spec, network=pool.network,
                        direct_routing=cfg.backend.direct_routing)
                elif ov.device != spec:  # a new subnet after a lost lease
                    ov.device = spec
                    ov.ensured = await ensure_device(ipr, spec)
                    ov.plane.rebind(ov.ensured.ifindex, local_subnet=spec.subnet)

    async def _masquerade(self, lease: Lease) -> None:
        cfg = self.cfg
        assert cfg is not None
        if not self.opts.ip_masq:
            return
        rules = [MasqRules(pool.network, sub) for pool, sub in (
            (cfg.ipv4, lease.key.subnet), (cfg.ipv6, lease.key.subnet6)) if pool and sub]
        self.masq = Masquerade(rules)
        await self.masq.apply()

    def _write_subnet_env(self, lease: Lease) -> None:
        cfg = self.cfg
        assert cfg is not None
        # pods get one MTU for both families: the smaller overlay's, or IPv6 packets sized for
        # the IPv4 overlay would be refused by their own node ("packet too big")
        mtu = min(ov.device.mtu for ov in self.overlays.values())
        SubnetEnv(cfg.ipv4.network if cfg.ipv4 else None, lease.key.subnet, mtu,
                  self.opts.ip_masq, cfg.ipv6.network if cfg.ipv6 else None,
                  lease.key.subnet6).write(self.opts.subnet_file)

    # -- peers ----------

    def _own_key(self) -> str | None:
        lease = self.lease
        return str(lease.key) if lease else None

    def _peers(self, leases: Any, version: int) -> list[Peer]:
        own = self._own_key()
        out = []
        for lease in leases:
            key = str(lease.key)
            if key == own:
                continue
            p = self._peer(lease, version)
            if p is not None:
                out.append(p)
        return out

    @staticmethod
    def _peer(lease: Lease, version: int) -> Peer | None:
        a = lease.attrs
        if version == 4 and lease.key.subnet and a.vtep_mac and a.public_ip:
            return Peer(str(lease.key), lease.key.subnet, a.public_ip, a.vtep_mac, a.vni)
        if version == 6 and lease.key.subnet6 and a.vtep_mac6 and a.public_ipv6:
            return Peer(str(lease.key), lease.key.subnet6, a.public_ipv6, a.vtep_mac6, a.vni)
        return None

    def _invalid(self, key: str, reason: str) -> None:
        self.invalid_total += 1
        if self.invalid.get(key) != reason:
            log.warning("skipping lease %s: %s", key, reason)
        self.invalid[key] = reason

    def on_store_event(self, ev: LeaseEvent) -> None:
        """Fold one lease event into every overlay's desired state (no kernel writes here)."""
        if ev.key == self._own_key():
            # any change to our key may be another writer's: the manager compares it with what
            # we wrote and puts ours back (our own writes compare equal and cost one read)
            assert self.mgr is not None
            self.mgr.check_soon()
            return
        if ev.kind is EventKind.INVALID:
            self._invalid(ev.key, ev.error.reason if ev.error else "invalid")
        else:
            self.invalid.pop(ev.key, None)
        for version, ov in self.overlays.items():
            p = self._peer(ev.lease, version) if ev.lease and ev.kind in (
                EventKind.ADDED, EventKind.CHANGED) else None
            if p is None:
                ov.plane.remove_peer(ev.key)
            else:
                ov.plane.add_peer(p)

    def _peer_ips(self) -> set[IPAddress]:
        """Where VXLAN may come from: the public IPs of the peers we program."""
        return {p.public_ip for ov in self.overlays.values() for p in ov.plane.peers.values()}

    # -- steady state ----------

    def _monitor_pass(self, ov: Overlay, kind: str, result: PassResult) -> None:
        version = next(v for v, o in self.overlays.items() if o is ov)
        self.on_pass(version, kind, result)

    async def _watch(self) -> None:
        async for ev in self.watcher.events():
            t0 = time.perf_counter()
            self.on_store_event(ev)
            for version, ov in self.overlays.items():
                result = ov.plane.apply()
                if result.total or result.failures:
                    self.on_pass(version, "event", result)
            if self.allow is not None:
                self.allow.changed()
            self.on_event_latency(time.perf_counter() - t0)

    async def _lease_lost(self, ev: LeaseLost) -> None:
        if ev.new.key == ev.old.key:
            log.warning("lease %s re-acquired after loss (%s)", ev.new.key, ev.reason)
            return
        log.error("lease %s lost (%s); now %s: moving devices and subnet.env", ev.old.key,
                  ev.reason, ev.new.key)
        await self._setup_overlays(ev.new)
        self._write_subnet_env(ev.new)
        await self._masquerade(ev.new)
        for version, ov in self.overlays.items():
            ov.plane.set_peers(self._peers(self.watcher.leases.values(), version))
            self.on_pass(version, "resync", ov.plane.resync())
        if self.allow is not None:
            self.allow.changed()

    async def run(self) -> None:
        """Start, then run every loop until cancelled (SIGTERM/SIGINT)."""
        await self.start()
        assert self.monitor is not None and self.mgr is not None and self.cfg is not None
        tasks = [asyncio.create_task(self.monitor.run(), name="monitor"),
                 asyncio.create_task(self._watch(), name="watch"),
                 asyncio.create_task(self.mgr.keepalive(self.cfg, self._lease_lost),
                                     name="keepalive")]
        if self.allow is not None:
            tasks.append(asyncio.create_task(self.allow.run(self.opts.resync_interval),
                                             name="allowlist"))
        if self.masq is not None:
            tasks.append(asyncio.create_task(
                self.masq.keep(min(self.opts.resync_interval, 5.0)), name="masquerade"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # a loop that died is a bug: surface it
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.etcd.close()
            if self.sock is not None:
                self.sock.close()

    # -- introspection (HTTP API) ----------

    def ipam(self) -> dict[str, Any]:
        lease, cfg, ext = self.lease, self.cfg, self.ext
        out: dict[str, Any] = {"nodeName": self.opts.node_name, "nodeId": self.node_id,
                               "ready": self.ready.is_set()}
        if lease is None or cfg is None or ext is None:
            return out
        out.update({
            "nodeIP": str(ext.ip or ext.ip6),
            "podSubnetThisNode": str(lease.key.subnet or lease.key.subnet6),
            "network": str(cfg.ipv4.network if cfg.ipv4 else cfg.ipv6.network),  # type: ignore[union-attr]
            "vtepMAC": next(iter(self.overlays.values())).device.mac if self.overlays else None,
            "mtu": next(iter(self.overlays.values())).device.mtu if self.overlays else None,
            "leaseKey": str(lease.key),
        })
        if lease.key.subnet6 and 6 in self.overlays:
            out.update({"nodeIPv6": str(ext.ip6), "podSubnetThisNodeIPv6": str(lease.key.subnet6),
                        "vtepMACIPv6": self.overlays[6].device.mac})
        return out

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready.is_set(),
                               "firstSyncWrites": self.first_sync_writes,
                               "invalidLeases": dict(self.invalid), "overlays": {}}
        if self.allow is not None:
            allow = self.allow
            out["vxlanAllowList"] = {
                "port": allow.port, "peers": None if allow.kernel is None else len(allow.kernel),
                "inStep": allow.kernel == self._peer_ips(), "repairs": allow.repairs,
                "refusedPackets": allow.refused_packets,
                "refusedSources": dict(sorted(allow.refused_sources.items()))}
        for version, ov in self.overlays.items():
            plane = ov.plane
            programmed = plane.programmed()
            out["overlays"][f"ipv{version}"] = {
                "device": ov.device.name, "ifindex": plane.spec.ifindex, "parked": plane.parked,
                "nexthops": plane.spec.use_nexthops,
                "peers": {k: {"subnet": str(p.subnet), "publicIP": str(p.public_ip),
                              "vtepMAC": p.vtep_mac, "programmed": k in programmed}
                          for k, p in sorted(plane.peers.items())},
                "rejected": dict(plane.rejected),
                "drift": plane.drift(),
                "kernelWrites": plane.writes,
            }
        return out

