"""The running agent: built whole by start-up (agent/startup.py), then its long-running tasks
under a supervisor. Store events and netlink notifications only change memory; the reconciler
writes the kernel once per drained batch. A stop leaves the kernel and the lease as they are,
so a restart disturbs nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from vxnet.agent.iface import ExternalInterface, Selection
from vxnet.agent.node import Node
from vxnet.agent.overlays import Overlays
from vxnet.agent.peers import PeerFeed
from vxnet.agent.state import AgentStatus, FamilyStatus, RunningStatus
from vxnet.agent.supervisor import Supervisor
from vxnet.agent.underlay import UnderlayWatch
from vxnet.health.checker import HealthChecker
from vxnet.kernel import netlink as nl
from vxnet.kernel.allowlist import AllowList
from vxnet.kernel.forward import Forwarding
from vxnet.kernel.masq import Masquerade
from vxnet.kernel.monitor import Monitor
from vxnet.kernel.reconciler import Observer, Reconciler
from vxnet.store.store import LeaseEvent, LeaseLost, Store

log = logging.getLogger(__name__)

FOLD_CHUNK = 200  # store events folded into memory per loop turn


class RuntimeObserver(Observer, Protocol):
    """Who hears about the runtime's timings (the metrics): kernel passes, and the loop."""

    def on_loop_lag(self, seconds: float) -> None: ...

    def on_probe(self, path: str, rtt: float | None) -> None: ...


class Runtime:
    def __init__(self, *, node: Node, selection: Selection, store: Store,
                 kernel: nl.RtnlSocket, overlays: Overlays, feed: PeerFeed,
                 reconciler: Reconciler, monitor: Monitor, allow: AllowList | None,
                 masq: Masquerade | None, forward: Forwarding | None,
                 health: HealthChecker | None,
                 observer: RuntimeObserver, first_sync_writes: int,
                 resync_interval: float) -> None:
        self.node, self.selection, self.store = node, selection, store
        self.kernel, self.overlays, self.feed = kernel, overlays, feed
        self.reconciler, self.monitor = reconciler, monitor
        self.allow, self.masq, self.forward, self.health = allow, masq, forward, health
        self.observer = observer
        self.first_sync_writes = first_sync_writes
        self.resync_interval = resync_interval
        self.supervisor = Supervisor()
        self.loop_lag_max = 0.0  # the longest the event loop was held, as last measured

    # -- store events (memory only) ----------

    def on_store_event(self, ev: LeaseEvent) -> None:
        """Fold one lease event into every overlay's desired state (no kernel writes here)."""
        if ev.key == str(self.store.lease.key):
            # any change to our key may be another writer's: the store compares it with what
            # we wrote and puts ours back (our own writes compare equal and cost one read)
            self.store.check_soon()
            return
        self.feed.apply(ev)

    def _changed(self, event_at: float | None = None) -> None:
        """Desired peer state changed: let the writers do their part, once per batch."""
        self.reconciler.kick(event_at)
        if self.allow is not None:
            self.allow.changed()

    # -- long-running tasks ----------

    async def _watch(self) -> None:
        async for batch in self.store.watch():
            arrived = time.perf_counter()
            for n, ev in enumerate(batch, 1):
                self.on_store_event(ev)
                if n % FOLD_CHUNK == 0:
                    await asyncio.sleep(0)  # a re-list of 20 000 changes must not hog the loop
            self._changed(arrived)

    async def _keepalive(self) -> None:
        await self._follow_lease()  # a move a failed earlier run of this task did not finish
        await self.store.keep(self.node.cfg, self._lease_lost)

    async def _lease_lost(self, ev: LeaseLost) -> None:
        if ev.new.key == ev.old.key:
            log.warning("lease %s re-acquired after loss (%s)", ev.new.key, ev.reason)
        else:
            log.error("lease %s lost (%s); now %s: moving devices and subnet.env", ev.old.key,
                      ev.reason, ev.new.key)
        await self._follow_lease()

    async def _follow_lease(self) -> None:
        node, lease = self.node, self.store.lease
        if lease.key == node.lease.key:
            return
        await self.overlays.follow(node, node.ext, lease)
        node.write_subnet_env(self.overlays.mtu, lease)
        if self.masq is not None:
            self.masq.rules = node.masquerade_rules(lease)
            await self.masq.apply()
        node.lease = lease  # only now: a move that failed half-way is tried again
        self._replan("resync")

    def _replan(self, why: str) -> None:
        """Devices were rebuilt: every peer checked again against the new surroundings."""
        self.feed.replan(str(self.node.lease.key))
        self.reconciler.request_resync(why)
        self._changed()

    async def follow_underlay(self, ext: ExternalInterface | None, why: str) -> None:
        """Apply what the underlay watch found: a new address is published in our lease (same
        key, same etcd lease; peers re-point their FDB from the lease event) and the devices
        follow it, as they follow a new interface or MTU. With nothing usable the node keeps
        its last state and says it is not ready. Idempotent: called on every look."""
        node = self.node
        if ext is None:
            if node.not_ready != why:
                log.error("no usable external interface (%s): keeping the last state", why)
            node.not_ready = why
            return
        old = node.ext
        if ext != old:
            log.warning("external interface now %s (index %d, MTU %d), public IP %s%s; was "
                        "%s, %s%s", ext.name, ext.index, ext.mtu, ext.ip,
                        f", {ext.ip6}" if ext.ip6 else "", old.name, old.ip,
                        f", MTU {old.mtu}" if old.mtu != ext.mtu else "")
            node.underlay_changes += 1
        # the node's own side first (it needs no store), then the lease, which may have to
        # wait for the store to be reachable from the new address (StoreUnavailable: tried
        # again soon)
        if await self.overlays.follow(node, ext, node.lease):
            node.write_subnet_env(self.overlays.mtu)
            self._replan("underlay")
        if (ext.ip, ext.ip6) != (old.ip, old.ip6):
            await self.store.reconnect()  # it left from an address we no longer have
        node.ext = ext
        if (ext.ip, ext.ip6) != node.published:  # only then: this runs on every look
            await self.store.move(node.info(ext), node.attrs_for(ext))
            node.published = (ext.ip, ext.ip6)  # not before: a failed publish is retried
        if node.not_ready is not None:
            log.info("external interface usable again: ready")
        node.not_ready = None

    async def _measure_loop_lag(self, every: float = 0.05) -> None:
        """How late a short sleep wakes up is how long someone else held the event loop."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(every)
            lag = max(0.0, time.perf_counter() - t0 - every)
            self.loop_lag_max = max(self.loop_lag_max, lag)
            self.observer.on_loop_lag(lag)

    async def run(self) -> None:
        """Every long-running task, supervised, until cancelled (SIGTERM/SIGINT); close()
        afterwards."""
        sup, cfg, every = self.supervisor, self.node.cfg, self.resync_interval
        sup.start("looplag", self._measure_loop_lag)
        sup.start("reconciler", self.reconciler.run)
        sup.start("monitor", self.monitor.run)
        sup.start("watch", self._watch)
        sup.start("keepalive", self._keepalive)
        sup.start("underlay", UnderlayWatch(self.selection, cfg.ipv4 is not None,
                                            cfg.ipv6 is not None, self.follow_underlay,
                                            interval=every).run)
        allow, masq, forward = self.allow, self.masq, self.forward
        if allow is not None:
            sup.start("allowlist", lambda: allow.run(every))
        if masq is not None:
            sup.start("masquerade", lambda: masq.keep(every))
        if forward is not None:
            sup.start("forward", lambda: forward.keep(every))
        if self.health is not None:
            sup.start("health", self.health.run)
        await sup.wait()

    async def close(self) -> None:
        """Stop the tasks and close the connections, each within a deadline (a stop that never
        ends is worse than one that leaves a task behind); kernel state and lease stay."""
        await self.supervisor.stop()
        await self.store.close()
        self.kernel.close()

    # -- what the API, the metrics and systemd read ----------

    @property
    def ready(self) -> bool:
        return self.node.not_ready is None

    @property
    def not_ready_reason(self) -> str:
        return self.node.not_ready or ""

    def status_line(self) -> str:
        if self.node.not_ready:
            return f"not ready: {self.node.not_ready}"
        peers = sum(len(ov.plane.peers) for ov in self.overlays)
        return f"ready: lease {self.node.lease.key}, {peers} peers"

    def status(self, detail: bool = False) -> AgentStatus:
        running = RunningStatus(
            node=self.node.status(), store=self.store.status(),
            overlays={v: FamilyStatus(ov.status(), ov.plane.status(),
                                      ov.plane.detail() if detail else None)
                      for v, ov in self.overlays.items()},
            invalid_leases=self.feed.invalid, invalid_total=self.feed.invalid_total,
            allow=self.allow.status() if self.allow is not None else None,
            masquerade_repairs=self.masq.repairs if self.masq is not None else 0,
            forward=self.forward.status() if self.forward is not None else None,
            reconciler=self.reconciler.status(), monitor=self.monitor.status(),
            tasks=self.supervisor.status(),
            health=self.health.status() if self.health is not None else None,
            first_sync_writes=self.first_sync_writes, loop_lag_max=self.loop_lag_max)
        return AgentStatus(self.node.opts.node_name, self.ready, "running",
                           self.not_ready_reason, running)
