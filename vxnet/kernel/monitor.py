"""Keeps the kernel caches in step between full passes: netlink notifications fold into them
(the reconciler then repairs the one entry that changed); our device going down parks its
overlay until it is up again (then a full resync); a deleted device is recreated with the same
MAC; lost notifications (ENOBUFS) and the periodic timer both ask for a full resync, which costs
a few dumps when nothing drifted. Nothing here writes peer state itself."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Coroutine

from vxnet.backoff import Backoff
from vxnet.kernel import netlink as nl
from vxnet.kernel.device import ensure_device, iproute
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.reconciler import Reconciler
from vxnet.nsenter import in_netns

log = logging.getLogger(__name__)

GROUPS = (nl.RTNLGRP_LINK, nl.RTNLGRP_NEIGH, nl.RTNLGRP_IPV4_ROUTE, nl.RTNLGRP_IPV6_ROUTE,
          nl.RTNLGRP_NEXTHOP)


class Monitor:
    def __init__(self, overlays: list[Overlay], reconciler: Reconciler, *,
                 netns: str | None = None, resync_interval: float = 30.0) -> None:
        self.overlays, self.reconciler, self.netns = overlays, reconciler, netns
        self.resync_interval = resync_interval
        self.events = 0
        self.overflows = 0
        self.repairs = 0
        self._sock: nl.RtnlSocket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------

    def open(self) -> None:
        """Subscribe. Done before the first sync, so no change after it goes unseen."""
        with in_netns(self.netns):
            self._sock = nl.RtnlSocket(GROUPS, rcvbuf=32 << 20)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def _close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def run(self) -> None:
        """Ask for a full resync every resync_interval until cancelled."""
        if self._sock is None:
            self.open()
        try:
            while True:
                await asyncio.sleep(self.resync_interval)
                self.reconciler.request_resync("periodic")
        finally:
            self._close()
            for t in self._tasks:
                t.cancel()

    # -- notifications ---------

    def _readable(self) -> None:
        assert self._sock is not None
        touched = False
        try:
            for mtype, buf, off, end in self._sock.recv_events():
                self.events += 1
                if mtype in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
                    self._link_event(mtype, *nl.parse_link(buf, off, end))
                    continue
                for ov in self.overlays:
                    touched = ov.plane.on_message(mtype, buf, off, end) or touched
        except OSError as e:
            # ENOBUFS: notifications were lost; anything else: the socket is unusable. Either
            # way a new socket and a full resync put us back in step.
            self.overflows += e.errno == errno.ENOBUFS
            log.warning("netlink notifications: %s; new socket and full resync", e)
            self._close()
            self.open()
            self.reconciler.request_resync("overflow")
            return
        if touched:
            self.reconciler.kick()

    def _link_event(self, mtype: int, index: int, flags: int) -> None:
        for ov in self.overlays:
            plane = ov.plane
            if index != plane.spec.ifindex or ov.repairing.locked():
                continue
            if mtype == nl.RTM_DELLINK:
                log.warning("device %s was deleted: recreating it", ov.device.name)
                plane.parked = True
                self._spawn(self._repair(ov))
            elif not flags & nl.IFF_UP:
                if not plane.parked:
                    log.warning("device %s is down: parked until it is up", ov.device.name)
                plane.parked = True
            elif plane.parked:
                log.info("device %s is up again: full resync", ov.device.name)
                plane.parked = False
                self.reconciler.request_resync("resync", ov)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, ov: Overlay) -> None:
        backoff = Backoff(0.05, 5)
        async with ov.repairing:
            while True:
                try:
                    async with iproute(self.netns) as ipr:
                        res = await ensure_device(ipr, ov.device)
                    break
                except Exception as e:  # parent gone, transient netlink error: retry
                    log.warning("recreating %s failed: %s", ov.device.name, e)
                    await backoff.sleep()
            self.repairs += 1
            ov.ensured = res
            ov.plane.rebind(res.ifindex)
        self.reconciler.request_resync("resync", ov)
