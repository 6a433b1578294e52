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

from vxnet.backoff import Backoff
from vxnet.kernel import netlink as nl
from vxnet.kernel.device import ensure_device
from vxnet.kernel.links import open_links
from vxnet.kernel.overlay import Overlay
from vxnet.kernel.reconciler import Reconciler
from vxnet.nsenter import in_netns

log = logging.getLogger(__name__)

GROUPS = (nl.RTNLGRP_LINK, nl.RTNLGRP_NEIGH, nl.RTNLGRP_IPV4_ROUTE, nl.RTNLGRP_IPV6_ROUTE,
          nl.RTNLGRP_NEXTHOP)


class Monitor:
    def __init__(self, overlays: list[Overlay], reconciler: Reconciler, *,
                 netns: str | None = None, resync_interval: float = 30.0,
                 writer_portid: int = 0) -> None:
        self.overlays, self.reconciler, self.netns = overlays, reconciler, netns
        # the echo of the reconciler's own writes (the kernel names the requesting socket in
        # them; FDB notifications excepted) is skipped: the caches already follow each write's
        # outcome, and parsing 60 000 echoes was a fifth of a 20 000-peer first sync
        self.writer_portid = writer_portid
        self.resync_interval = resync_interval
        self.events = 0
        self.overflows = 0
        self.repairs = 0  # devices recreated
        self.drift_repairs = 0  # device attributes put back in place
        self._sock: nl.RtnlSocket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._again: set[Overlay] = set()  # a check is running; another is wanted after it

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

    def _readable(self) -> None:
        assert self._sock is not None
        touched = False
        try:
            for mtype, buf, off, end in self._sock.recv_events(skip_portid=self.writer_portid):
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
            if index != plane.spec.ifindex:
                continue
            if mtype == nl.RTM_DELLINK or not flags & nl.IFF_UP:
                if not plane.parked:
                    log.warning("device %s is %s: parked until it is back", ov.device.name,
                                "gone" if mtype == nl.RTM_DELLINK else "down")
                plane.parked = True
            self._check(ov)

    def _check(self, ov: Overlay) -> None:
        """Put our device back as specified, soon (one check at a time per device)."""
        if ov.repairing.locked():
            self._again.add(ov)
            return
        task = asyncio.ensure_future(self._ensure(ov))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ensure(self, ov: Overlay) -> None:
        backoff = Backoff(0.05, 5)
        while True:
            async with ov.repairing:  # the device is ours alone while we look at it
                self._again.discard(ov)
                try:
                    with open_links(self.netns) as links:
                        res = ensure_device(links, ov.device, self.netns)
                except Exception as e:  # parent gone, transient netlink error: retry
                    res = None
                    log.warning("putting %s back failed: %s", ov.device.name, e)
                if res is not None:
                    ov.ensured = res
                    if res.action != "reused":
                        self.repairs += 1
                        ov.plane.rebind(res.ifindex)
                    elif res.changes:
                        self.drift_repairs += 1
                    # down or gone, the kernel dropped our routes, nexthops and neighbours,
                    # some without a word: only a full pass knows what is left
                    resync = res.action != "reused" or ov.plane.parked
                    ov.plane.parked = False
            if res is None:
                # not holding the device while we wait: a new spec (the parent replaced, say)
                # may be set meanwhile, and the next try uses it
                await backoff.sleep()
                continue
            if resync:  # asked with the device free, or the reconciler would skip it
                self.reconciler.request_resync("resync", ov)
            if ov not in self._again:
                return
