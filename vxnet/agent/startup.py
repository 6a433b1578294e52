"""Start-up: config -> external interface -> lease -> node ID -> allow-list -> devices ->
subnet.env -> masquerade -> snapshot -> first full sync; the result is a Runtime, whole.

What may come later (etcd, the interface, a free subnet) is waited for, with backoff and a log
line saying what for (also shown by /readyz); what will never work (an invalid config or flag,
refused credentials) ends the process with one line."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vxnet.agent.iface import ExternalInterface, InterfaceUnavailable, Selection, find_external
from vxnet.agent.options import AgentOptions
from vxnet.agent.runtime import (
    HealthTargets,
    Runtime,
    RuntimeObserver,
    lease_attrs,
    masquerade_rules,
    peer_ips,
    peers_of,
    setup_overlays,
    write_subnet_env,
)
from vxnet.agent.state import AgentState
from vxnet.backoff import Backoff
from vxnet.errors import (
    ExhaustedError,
    StoreUnavailable,
    SubnetEnvError,
    SubnetTaken,
    VxnetError,
)
from vxnet.health.checker import HealthChecker
from vxnet.kernel import netlink as nl
from vxnet.kernel import nft
from vxnet.kernel.allowlist import AllowList
from vxnet.kernel.links import open_links
from vxnet.kernel.masq import Masquerade
from vxnet.kernel.monitor import Monitor
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.reconciler import Reconciler
from vxnet.store.allocator import node_subnet
from vxnet.store.etcd import Etcd, TLSFiles, credentials
from vxnet.store.lease import SubnetKey
from vxnet.store.manager import LeaseManager, NodeInfo, read_config
from vxnet.store.nodeid import check_node_name, node_id
from vxnet.store.paths import Paths
from vxnet.store.subnetenv import SubnetEnv
from vxnet.store.watcher import LeaseWatcher

log = logging.getLogger(__name__)
T = TypeVar("T")


async def wait_for(state: AgentState, what: str, fn: Callable[[], Awaitable[T]],
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
    return SubnetKey(env.subnet, env.ipv6_subnet)  # type: ignore[arg-type]


async def start(opts: AgentOptions, state: AgentState, observer: RuntimeObserver) -> Runtime:
    check_node_name(opts.node_name)
    etcd = Etcd(opts.etcd_endpoints, timeout=opts.etcd_timeout,
                tls=TLSFiles(opts.etcd_cafile, opts.etcd_certfile, opts.etcd_keyfile),
                auth=credentials(opts.etcd_username, opts.etcd_password))
    try:
        return await _start(opts, state, observer, etcd, Paths(opts.etcd_prefix))
    except BaseException:
        await etcd.close()
        raise


async def _start(opts: AgentOptions, state: AgentState, observer: RuntimeObserver, etcd: Etcd,
                 paths: Paths) -> Runtime:
    cfg = await wait_for(state, "reading the network config", lambda: read_config(etcd, paths))
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
    nid = await wait_for(state, "allocating a node ID",
                         lambda: node_id(etcd, paths, opts.node_name))
    fixed = None
    if cfg.subnet_allocation == "node-id":  # the subnet follows from the node ID alone
        fixed = SubnetKey(node_subnet(cfg.ipv4, nid) if cfg.ipv4 else None,  # type: ignore[arg-type]
                          node_subnet(cfg.ipv6, nid) if cfg.ipv6 else None)
    mgr = LeaseManager(etcd, paths, NodeInfo(opts.node_name, ext.ip, ext.ip6),
                       lambda key: lease_attrs(cfg, ext, key), ttl=opts.subnet_lease_ttl,
                       renew_margin=opts.subnet_lease_renew_margin * 60, fixed=fixed)
    prefer = previous_subnet(opts.subnet_file)
    lease = await wait_for(state, "acquiring a subnet lease", lambda: mgr.acquire(cfg, prefer),
                           (StoreUnavailable, ExhaustedError, SubnetTaken))
    log.info("lease %s (node ID %d)", lease.key, nid)
    state.phase = "setting up the node"
    overlays: dict[int, Overlay] = {}
    allow = None
    if opts.vxlan_allowlist:  # in place before our device can receive anything
        if not nft.available():
            raise VxnetError("the VXLAN allow-list needs nft (Debian: nftables); install it "
                             "or turn the allow-list off with --no-vxlan-allowlist")
        allow = AllowList(cfg.backend.port, lambda: peer_ips(overlays))
        await allow.ensure_table()
    sock = nl.RtnlSocket()
    await setup_overlays(sock, opts, cfg, ext, lease, overlays)
    write_subnet_env(opts, cfg, lease, overlays)
    masq = None
    if opts.ip_masq:
        masq = Masquerade(masquerade_rules(cfg, lease))
        await masq.apply()
    # The acquire's own listing is the snapshot: the watch resumes from its revision, so
    # nothing after it is missed (our own write included, and skipped as ours).
    watcher = LeaseWatcher(etcd, paths)
    snap = watcher.adopt(mgr.take_snapshot())
    reconciler = Reconciler(list(overlays.values()), observer)
    monitor = Monitor(list(overlays.values()), reconciler, resync_interval=opts.resync_interval,
                      writer_portid=sock.portid)
    monitor.open()  # subscribed before the first sync: no change after it goes unseen

    state.phase = "first sync"
    # The first sync allocates tens of objects per peer, nearly all long-lived: with the
    # cyclic GC paused they are not rescanned over and over, and frozen afterwards they stay
    # out of every later collection, so resyncs stay cheap.
    gc.disable()
    try:
        for version, ov in overlays.items():
            ov.plane.set_peers(peers_of(snap.leases.values(), version, str(lease.key)))
        if allow is not None:  # peers' packets are let in before we send them any
            await allow.sync(full=True)
        writes = await reconciler.resync_now("first")
    finally:
        gc.enable()
    gc.freeze()
    health = HealthChecker(HealthTargets(overlays, allow), opts.health_interval, observer
                           ) if opts.health_interval > 0 else None
    runtime = Runtime(opts, cfg, selection, ext, etcd, mgr, lease, nid, sock, overlays, watcher,
                      reconciler, monitor, allow, masq, observer, writes, health)
    for key, err in snap.invalid.items():
        runtime.note_invalid(key, str(err.reason))
    log.info("first sync: %d peers, %d kernel writes; ready",
             sum(len(ov.plane.peers) for ov in overlays.values()), writes)
    return runtime
