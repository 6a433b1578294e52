"""The one loop that writes peer state to the kernel (Felix's CompleteDeferredWork).

Everything else only changes memory -- store events fold into desired state, netlink
notifications into the kernel caches, timers and overflows mark a resync pending -- and then
kick this loop. It does the work in short steps (a dump, a chunk of writes), yielding to the
event loop between them, so the HTTP API, the watch and the lease keepalive are never starved.
A pass that fails or raises leaves its keys dirty and a resync pending, retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from vxnet.backoff import Backoff
from vxnet.errors import VxnetError
from vxnet.kernel.dataplane import Dataplane
from vxnet.kernel.table import PassResult

log = logging.getLogger(__name__)


class Overlay(Protocol):
    """What a pass needs of an overlay (kernel/overlay.py's): its peer state, and whether its
    device is being changed right now."""

    @property
    def plane(self) -> Dataplane: ...

    @property
    def busy(self) -> bool: ...


class Observer(Protocol):
    """Who hears about passes (the agent's metrics)."""

    def on_pass(self, version: int, kind: str, result: PassResult) -> None: ...

    def on_event_latency(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ReconcilerStatus:
    errors: int  # passes that raised (each retried after a full resync)


class Reconciler:
    def __init__(self, overlays: list[Overlay], observer: Observer | None = None) -> None:
        self.overlays = overlays
        self.observer = observer
        self.errors = 0  # passes that raised (each retried)
        self._wake = asyncio.Event()
        self._resync: dict[Overlay, str] = {}  # overlay -> why a full pass is pending
        self._event_at: float | None = None  # when the oldest store change not yet written came
        self.last_writes = 0  # of the last round
        self._skipped = False  # the last round left an overlay out (its device was busy)

    # -- what the rest of the agent calls (memory only) ----------

    def kick(self, event_at: float | None = None) -> None:
        """Desired state or the kernel caches changed: apply the dirty keys soon. event_at:
        when the store change behind it arrived (for the event-to-kernel latency)."""
        if event_at is not None and self._event_at is None:
            self._event_at = event_at
        self._wake.set()

    def request_resync(self, why: str, overlay: Overlay | None = None) -> None:
        for ov in [overlay] if overlay is not None else self.overlays:
            self._resync.setdefault(ov, why)
        self._wake.set()

    def status(self) -> ReconcilerStatus:
        return ReconcilerStatus(self.errors)

    @property
    def idle(self) -> bool:
        return not self._wake.is_set() and not self._resync

    # -- the loop ----------

    async def run(self) -> None:
        backoff = Backoff(0.1, 10)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                failed = await self.run_once()
            except (OSError, VxnetError) as e:  # socket trouble, a dump interrupted 5 times
                failed = True
                self.errors += 1
                log.warning("kernel pass failed: %s; full resync in a moment", e)
                self.request_resync("error")
            if failed:
                await backoff.sleep()
                self._wake.set()
            else:
                backoff.reset()
            if self._skipped:  # a device being put back: its work waits, not forgotten
                await asyncio.sleep(0.02)
                self._wake.set()

    async def run_once(self, keep_extra: bool = False, label: str = "event") -> bool:
        """One round over every overlay: a full pass where one is pending, else the dirty
        keys (a pass of those is reported as `label`). True if some write failed (its keys
        stay dirty for the retry). keep_extra: sets only (Dataplane.apply_steps)."""
        self.last_writes = 0
        failed = False
        self._skipped = False
        for ov in self.overlays:
            if ov.busy:  # the device is being changed: try again shortly
                self._skipped = True
                continue
            why = self._resync.pop(ov, None)
            result = PassResult()
            try:
                plane = ov.plane
                await drive(plane.resync_steps(result, keep_extra=keep_extra) if why
                            else plane.apply_steps(result, keep_extra=keep_extra))
            except BaseException:
                if why:
                    self._resync.setdefault(ov, why)
                raise
            self.last_writes += result.total
            if self.observer is not None and (why or result.total or result.failures):
                self.observer.on_pass(ov.plane.spec.version, why or label, result)
            failed = failed or bool(result.failures)
            if ov.plane.pending and not result.failures:
                self._wake.set()  # changed while we wrote: another round
        if self._event_at is not None and not any(ov.plane.pending for ov in self.overlays):
            if self.observer is not None:
                self.observer.on_event_latency(time.perf_counter() - self._event_at)
            self._event_at = None
        return failed

    async def resync_now(self, why: str, keep_extra: bool = False) -> int:
        """A full pass over every overlay, awaited (the first sync at start-up); its writes."""
        self.request_resync(why)
        return await self.apply_now(why, keep_extra)

    async def apply_now(self, why: str, keep_extra: bool = False) -> int:
        """The pending work of every overlay done now, awaited (start-up's first sync, as the
        listing's pages come); its writes. keep_extra: sets only (Dataplane.apply_steps)."""
        self._wake.clear()
        if await self.run_once(keep_extra, why) or self._skipped:
            self._wake.set()  # failed writes, or a busy device's work: run() does them
        return self.last_writes


async def drive(steps: Iterator[None]) -> None:
    """Run a step generator, letting the event loop in between steps."""
    for _ in steps:
        await asyncio.sleep(0)
