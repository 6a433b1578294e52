"""Following the node's underlay: the external interface is chosen again whenever a link or an
address changes on the node (and every interval, for what no notification tells, such as a new
default route), and a different answer -- another address, another interface, another MTU, or
none at all -- is handed to the runtime to apply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from vxnet.agent.iface import ExternalInterface, InterfaceUnavailable, Selection, find_external
from vxnet.backoff import Backoff
from vxnet.errors import StoreUnavailable
from vxnet.kernel import netlink as nl
from vxnet.kernel.events import EventSocket
from vxnet.kernel.links import open_links

log = logging.getLogger(__name__)

RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR = 5, 9
SETTLE = 0.05  # seconds: an address swap is two notifications; look once they are both in

Apply = Callable[[ExternalInterface | None, str], Awaitable[None]]


class UnderlayWatch:
    def __init__(self, selection: Selection, want4: bool, want6: bool, apply: Apply, *,
                 interval: float = 30.0) -> None:
        self.selection, self.want4, self.want6 = selection, want4, want6
        self.apply, self.interval = apply, interval
        self._wake = asyncio.Event()

    async def select(self) -> tuple[ExternalInterface | None, str]:
        """The interface to use now, or None and why there is none."""
        try:
            with open_links() as links:
                return find_external(links, self.selection, self.want4, self.want6), ""
        except InterfaceUnavailable as e:
            return None, str(e)

    async def run(self) -> None:
        events = EventSocket((nl.RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR),
                             self._changed, self._changed, name="underlay notifications")
        backoff = Backoff(0.2, 5)
        wait = self.interval
        with events:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                await asyncio.sleep(SETTLE)
                self._wake.clear()
                if events.error is not None:
                    raise events.error  # no new socket: the supervisor restarts us
                ext, why = await self.select()
                try:
                    await self.apply(ext, why)  # idempotent: compares with what is in place
                    wait = self.interval
                    backoff.reset()
                except StoreUnavailable as e:  # the new address not yet published: soon again
                    wait = backoff.next_delay()
                    log.warning("publishing the new underlay address: %s; again in %.1fs", e,
                                wait)

    def _changed(self, _: object) -> None:
        """A link or an address changed, or notifications of such were lost (and the socket
        replaced): look again."""
        self._wake.set()
