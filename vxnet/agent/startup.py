"""Start-up: config -> external interface -> lease (and node ID) -> allow-list -> devices ->
subnet.env -> masquerade -> the first sync, page by page as everyone's leases are listed; the
result is a Runtime, whole.

What may come later (the store, the interface, a free subnet) is waited for, with backoff and
a log line saying what for (also shown by /readyz); what will never work (an invalid config or
flag, refused credentials) ends the process with one line."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from typing import TypeVar

from vxnet.agent.iface import ExternalInterface, InterfaceUnavailable, Selection, find_external
from vxnet.agent.node import Node, lease_attrs
from vxnet.agent.options import AgentOptions
from vxnet.agent.overlays import Overlays
from vxnet.agent.peers import HealthTargets, PeerFeed, peers_of
from vxnet.agent.runtime import Runtime, RuntimeObserver
from vxnet.agent.state import Startup
from vxnet.backoff import Backoff
from vxnet.errors import (
    ExhaustedError,
    RevisionCompacted,
    StoreUnavailable,
    SubnetEnvError,
    SubnetTaken,
    VxnetError,
)
from vxnet.health.checker import HealthChecker
from vxnet.ip import of_family
from vxnet.kernel import netlink as nl
from vxnet.kernel import nft
from vxnet.kernel.allowlist import AllowList
from vxnet.kernel.forward import Forwarding
from vxnet.kernel.links import open_links
from vxnet.kernel.masq import Masquerade
from vxnet.kernel.monitor import Monitor
from vxnet.kernel.reconciler import Reconciler
from vxnet.store.lease import SubnetKey
from vxnet.store.paths import Paths
from vxnet.store.store import NodeInfo, Store, check_node_name
from vxnet.store.subnetenv import SubnetEnv

log = logging.getLogger(__name__)
T = TypeVar("T")


async def wait_for(state: Startup, what: str, fn: Callable[[], Awaitable[T]],
                   retry_on: tuple[type[Exception], ...] = (StoreUnavailable,)) -> T:
    """fn() until it stops raising retry_on; each wait is logged and shown as the phase."""
    backoff = Backoff(0.2, 10)
    state.phase = what
    while True:
        try:
            return await fn()
        except retry_on as e:
            delay = backoff.next_delay()
            state.phase = f"{what}: {e}"
            log.warning("%s: %s; retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)


def previous_subnet(path: str) -> SubnetKey | None:
    try:
        env = SubnetEnv.read(path)
    except SubnetEnvError as e:
        log.info("no previous subnet to prefer (%s)", e)
        return None
    # A subnet of the wrong family in the file is no preference (choose() would skip it)
    subnet, subnet6 = of_family(env.subnet, IPv4Network), of_family(env.ipv6_subnet, IPv6Network)
    if subnet is None and subnet6 is None:
        return None
    return SubnetKey(subnet, subnet6)


async def open_store(opts: AgentOptions, state: Startup) -> tuple[Store, AgentOptions]:
    """The store the options name, and the options with the node's name as that store knows
    it. Each store's client is imported only in its own mode (etcd's brings gRPC)."""
    if not opts.kube_subnet_mgr:
        from vxnet.store.etcdstore import EtcdStore

        return EtcdStore(opts.client(opts.etcd_timeout), Paths(opts.etcd_prefix),
                         ttl=opts.subnet_lease_ttl,
                         renew_margin=opts.subnet_lease_renew_margin * 60), opts
    from vxnet.store.kube import Credentials, KubeClient
    from vxnet.store.kubestore import KubeStore, node_name

    client = KubeClient(Credentials.load(opts.kubeconfig_file, opts.kube_api_url),
                        timeout=opts.etcd_timeout)
    try:
        name = await wait_for(state, "finding this node's name",
                              lambda: node_name(client, opts.node_name))
    except BaseException:
        await client.close()
        raise
    store = KubeStore(client, name, prefix=opts.kube_annotation_prefix,
                      net_conf_path=opts.net_config_path)
    return store, replace(opts, node_name=name)


async def start(opts: AgentOptions, state: Startup, observer: RuntimeObserver) -> Runtime:
    store, opts = await open_store(opts, state)
    try:
        check_node_name(opts.node_name)
        return await _start(opts, state, observer, store)
    except BaseException:
        await store.close()
        raise


class Laps:
    """Wall time by stage, each stage timed from the end of the one before: where a first sync
    goes, in its log line (and in the benchmark's table)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        t = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + t - self._t
        self._t = t

    def __str__(self) -> str:
        total = sum(self.seconds.values())
        return f"{total:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in self.seconds.items())})"


def since_process_start() -> float | None:
    """Seconds since this process started (imports and all), from /proc; None if unreadable."""
    try:
        with open("/proc/self/stat") as f:  # after the ")" of the command's name: field 3 on
            started = int(f.read().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


async def _first_sync(state: Startup, store: Store, own: str, overlays: Overlays,
                      feed: PeerFeed, allow: AllowList | None, reconciler: Reconciler
                      ) -> tuple[int, int, Laps]:
    """Everyone's leases into the kernel, each page of the listing as it comes (the store
    reads the next meanwhile): peers admitted, let in by the allow-list before we send them
    anything, their entries set. What the kernel and the allow-list hold beyond them (on a
    restart, what the peers on later pages need) stays until the last page is in; then it
    goes, so a restart drops nothing. A listing the store breaks off is read again from
    scratch (what the kernel holds stays meanwhile). The writes, the pages, and the time
    each stage took."""
    writes = attempts = 0
    laps = Laps()

    async def listing() -> int:
        """One whole listing, programmed page by page; its pages."""
        nonlocal writes, attempts
        attempts += 1
        if attempts > 1:  # desired state as of the broken-off listing: none of it holds
            for ov in overlays:
                ov.plane.set_peers([])
            feed.invalid.clear()
        pages = 0
        # This allocates tens of objects per peer, nearly all long-lived: with the cyclic GC
        # paused they are not rescanned over and over, and frozen afterwards (by the caller)
        # they stay out of every later collection, so resyncs stay cheap. Not paused over
        # the waits between attempts, however long an outage.
        gc.disable()
        try:
            async for page in store.listing():
                laps.lap("listing")  # etcd's answer read and decoded (the next is on its way)
                for key, err in page.invalid.items():
                    feed.note_invalid(key, str(err.reason))
                for version, ov in overlays.items():
                    for p in peers_of(page.leases, version, own):
                        ov.plane.add_peer(p)
                laps.lap("admission")
                if allow is not None:
                    await allow.sync(full=not pages, keep_extra=True)
                    laps.lap("allow-list")
                writes += await (reconciler.apply_now("first", keep_extra=True) if pages
                                 else reconciler.resync_now("first", keep_extra=True))
                laps.lap("kernel")
                pages += 1
        finally:
            gc.enable()
        return pages

    # the listing's revision is pinned: compacted meanwhile, it is read again at a new one
    pages = await wait_for(state, "first sync", listing, (StoreUnavailable, RevisionCompacted))
    writes += await reconciler.apply_now("first")
    laps.lap("kernel")
    if allow is not None:  # and only then stop letting in whom we no longer send to
        await allow.sync()
        laps.lap("allow-list")
    return writes, pages, laps


async def _start(opts: AgentOptions, state: Startup, observer: RuntimeObserver, store: Store
                 ) -> Runtime:
    cfg = await wait_for(state, "reading the network config", store.config)
    for w in cfg.warnings:
        log.warning("network config: %s", w)

    selection = Selection(opts.iface, opts.iface_regex, opts.iface_can_reach, opts.public_ip,
                          opts.public_ipv6)

    async def external() -> ExternalInterface:
        with open_links() as links:
            return find_external(links, selection, cfg.enable_ipv4, cfg.enable_ipv6)

    ext = await wait_for(state, "finding the external interface", external,
                         (InterfaceUnavailable,))
    log.info("external interface %s (index %d, MTU %d), public IP %s%s", ext.name, ext.index,
             ext.mtu, ext.ip, f", {ext.ip6}" if ext.ip6 else "")
    prefer = previous_subnet(opts.subnet_file)

    lease = await wait_for(
        state, "acquiring a subnet lease",
        lambda: store.acquire(cfg, NodeInfo(opts.node_name, ext.ip, ext.ip6),
                              lease_attrs(cfg, ext), prefer),
        (StoreUnavailable, ExhaustedError, SubnetTaken))
    node_id = store.status().node_id
    log.info("lease %s%s", lease.key, "" if node_id is None else f" (node ID {node_id})")
    node = Node(opts, cfg, ext, lease)
    state.phase = "setting up the node"
    sock = nl.RtnlSocket()
    overlays: Overlays | None = None
    allow = None
    if opts.vxlan_allowlist:  # in place before our device can receive anything
        if not nft.available():
            raise VxnetError("the VXLAN allow-list needs nft (Debian: nftables); install it "
                             "or turn the allow-list off with --no-vxlan-allowlist")
        # asked only from the first sync on, when the overlays exist
        allow = AllowList(cfg.backend.port,
                          lambda: overlays.peer_ips() if overlays else frozenset())
        await allow.ensure_table()
    overlays = Overlays(sock, node)
    node.write_subnet_env(overlays.mtu)
    masq = None
    if opts.ip_masq:
        masq = Masquerade(node.masquerade_rules())
        await masq.apply()
    # written by its task, first thing after ready: nothing here waits for iptables
    forward = Forwarding(node.forward_rules()) if opts.iptables_forward_rules else None
    reconciler = Reconciler(list(overlays), observer)
    monitor = Monitor(list(overlays), reconciler, resync_interval=opts.resync_interval,
                      writer_portid=sock.portid)
    monitor.open()  # subscribed before the first sync: no change after it goes unseen
    feed = PeerFeed(overlays)
    writes, pages, laps = await _first_sync(state, store, str(lease.key), overlays, feed,
                                            allow, reconciler)
    gc.freeze()
    health = HealthChecker(HealthTargets(overlays, allow), opts.health_interval, observer
                           ) if opts.health_interval > 0 else None
    age = since_process_start()
    log.info("first sync: %d peers (%d %s of the listing), %d kernel writes in %s; ready%s",
             sum(len(ov.plane.peers) for ov in overlays), pages,
             "page" if pages == 1 else "pages", writes, laps,
             "" if age is None else f" {age:.2f} s after the process started")
    await store.ready()
    return Runtime(node=node, selection=selection, store=store, kernel=sock, overlays=overlays,
                   feed=feed, reconciler=reconciler, monitor=monitor, allow=allow, masq=masq,
                   forward=forward, health=health, observer=observer, first_sync_writes=writes,
                   resync_interval=opts.resync_interval)
