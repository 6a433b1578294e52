"""Keeps the kernel caches in step between full passes: netlink notifications fold into them
(the reconciler then repairs the one entry that changed). Any change to our device -- deleted,
down, another MTU, MAC, learning or checksum setting -- is put back (recreated with the same MAC
only where the kernel cannot change it in place); while it is gone or down its overlay is parked,
and a full resync follows. Lost notifications (ENOBUFS) and the periodic timer both ask for a
full resync (and a device check), which costs a few dumps when nothing drifted. Nothing here
writes peer state itself."""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass

from vxnet.backoff import Backoff
from vxnet.kernel import netlink as nl
from vxnet.kernel.events import EventSocket
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.reconciler import Reconciler

log = logging.getLogger(__name__)

GROUPS = (nl.RTNLGRP_LINK, nl.RTNLGRP_NEIGH, nl.RTNLGRP_IPV4_ROUTE, nl.RTNLGRP_IPV6_ROUTE,
          nl.RTNLGRP_NEXTHOP)


@dataclass(frozen=True, slots=True)
class MonitorStatus:
    events: int  # netlink notifications read
    overflows: int  # notifications lost (each a full resync)


class Monitor:
    def __init__(self, overlays: list[Overlay], reconciler: Reconciler, *,
                 netns: str | None = None, resync_interval: float = 30.0,
                 writer_portid: int = 0) -> None:
        self.overlays, self.reconciler, self.netns = overlays, reconciler, netns
        # the echo of the reconciler's own writes (the kernel names the requesting socket in
        # them; FDB notifications excepted) is dropped by the kernel (a socket filter): the
        # caches already follow each write's outcome, and reading 60 000 echoes one recvmsg
        # at a time was a fifth of a 20 000-peer first sync
        self.writer_portid = writer_portid
        self.resync_interval = resync_interval
        self.events = 0
        self.overflows = 0
        self._sock: EventSocket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._again: set[Overlay] = set()  # a check is running; another is wanted after it

    def status(self) -> MonitorStatus:
        return MonitorStatus(self.events, self.overflows)

    # -- lifecycle ---------

    def open(self) -> None:
        """Subscribe. Done before the first sync, so no change after it goes unseen."""
        self._sock = EventSocket(GROUPS, self._notified, self._lost, netns=self.netns,
                                 rcvbuf=32 << 20, skip_portid=self.writer_portid)
        self._sock.open()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self) -> None:
        """Ask for a full resync (and check the devices) every resync_interval until
        cancelled. Reopened after a failure, it resyncs at once: it may have missed changes."""
        if self._sock is None:
            self.open()
            self.reconciler.request_resync("monitor restart")
        try:
            while True:
                await asyncio.sleep(self.resync_interval)
                self.reconciler.request_resync("periodic")
                for ov in self.overlays:
                    self._check(ov)
        finally:
            self._close()
            for t in self._tasks:
                t.cancel()

    # -- notifications ---------

    def _notified(self, events: list[nl.Event]) -> None:
        self.events += len(events)
        touched = False
        for mtype, buf, off, end in events:
            if mtype in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
                self._link_event(mtype, *nl.parse_link(buf, off, end))
                continue
            for ov in self.overlays:
                touched = ov.plane.on_message(mtype, buf, off, end) or touched
        if touched:
            self.reconciler.kick()

    def _lost(self, e: OSError) -> None:
        # ENOBUFS: notifications were lost; anything else: the socket was unusable. Either
        # way, listening on a new socket, a full resync puts us back in step.
        self.overflows += e.errno == errno.ENOBUFS
        self.reconciler.request_resync("overflow")

    def _link_event(self, mtype: int, index: int, flags: int) -> None:
        for ov in self.overlays:
            if index != ov.plane.spec.ifindex:
                continue
            if mtype == nl.RTM_DELLINK or not flags & nl.IFF_UP:
                ov.park("gone" if mtype == nl.RTM_DELLINK else "down")
            self._check(ov)

    def _check(self, ov: Overlay) -> None:
        """Have the overlay put its device back as specified, soon (one check at a time per
        device; one asked for during a check runs after it)."""
        if ov.busy:
            self._again.add(ov)
            return
        task = asyncio.ensure_future(self._repair(ov))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, ov: Overlay) -> None:
        backoff = Backoff(0.05, 5)
        while True:
            self._again.discard(ov)
            try:
                resync = await ov.repair()
            except Exception as e:  # parent gone, transient netlink error: retry
                # not holding the device while we wait: a new spec (the parent replaced,
                # say) may be set meanwhile, and the next try uses it
                log.warning("putting %s back failed: %s", ov.device.name, e)
                await backoff.sleep()
                continue
            if resync:  # asked with the device free, or the reconciler would skip it
                self.reconciler.request_resync("resync", ov)
            if ov not in self._again:
                return
