"""Keeps the kernel in step between full syncs: netlink notifications repair the one entry that
changed; our device going down parks its overlay until it is up again (then a full resync);
a deleted device is recreated with the same MAC; lost notifications (ENOBUFS) and the periodic
timer both mean a full resync, which costs a few dumps when nothing drifted."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Coroutine

from vxnet.backoff import Backoff
from vxnet.kernel import netlink as nl
from vxnet.kernel.dataplane import PassResult
from vxnet.kernel.device import ensure_device, iproute
from vxnet.kernel.overlay import Overlay
from vxnet.nsenter import in_netns

log = logging.getLogger(__name__)

GROUPS = (nl.RTNLGRP_LINK, nl.RTNLGRP_NEIGH, nl.RTNLGRP_IPV4_ROUTE, nl.RTNLGRP_IPV6_ROUTE,
          nl.RTNLGRP_NEXTHOP)


class Monitor:
    def __init__(self, overlays: list[Overlay], *, netns: str | None = None,
                 resync_interval: float = 30.0,
                 on_pass: Callable[[Overlay, str, PassResult], None] | None = None) -> None:
        self.overlays, self.netns = overlays, netns
        self.resync_interval = resync_interval
        self.on_pass = on_pass
        self.events = 0
        self.overflows = 0
        self.repairs = 0
        self._sock: nl.RtnlSocket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------

    def _open(self) -> None:
        with in_netns(self.netns):
            self._sock = nl.RtnlSocket(GROUPS, rcvbuf=32 << 20)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def _close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def run(self) -> None:
        """Subscribe, then resync every resync_interval until cancelled. The socket is open
        before this first yields, so nothing that happens after start-up goes unseen."""
        self._open()
        try:
            while True:
                await asyncio.sleep(self.resync_interval)
                self.resync_all("periodic")
        finally:
            self._close()
            for t in self._tasks:
                t.cancel()

    # -- passes ---------

    def _report(self, ov: Overlay, kind: str, result: PassResult) -> None:
        if self.on_pass is not None:
            self.on_pass(ov, kind, result)

    def resync_all(self, kind: str = "resync") -> None:
        for ov in self.overlays:
            if not ov.repairing.locked():
                self._report(ov, kind, ov.plane.resync())

    # -- notifications ---------

    def _readable(self) -> None:
        assert self._sock is not None
        touched: list[Overlay] = []
        try:
            for mtype, buf, off, end in self._sock.recv_events():
                self.events += 1
                if mtype in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
                    self._link_event(mtype, *nl.parse_link(buf, off, end))
                    continue
                for ov in self.overlays:
                    if ov.plane.on_message(mtype, buf, off, end) and ov not in touched:
                        touched.append(ov)
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            self.overflows += 1
            log.warning("netlink notifications were lost (ENOBUFS): full resync")
            self._close()
            self._open()
            self.resync_all("overflow")
            return
        for ov in touched:
            self._report(ov, "event", ov.plane.apply())

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
                self._report(ov, "resync", plane.resync())

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
            self._report(ov, "resync", ov.plane.resync())
