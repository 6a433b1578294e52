"""Netlink notifications, read from the event loop: the one piece of plumbing behind the
monitor (routes, neighbours, links), the underlay watch (links, addresses) and the allow-list
(nftables changes).

An EventSocket subscribes to multicast groups (in a network namespace if given), reads what is
queued whenever the socket is readable -- a bounded number of datagrams per turn, so a flood
never holds the loop -- and hands the parsed messages to a callback. When notifications are
lost (ENOBUFS: the receive buffer overflowed) or the socket fails in any other way, it closes
the socket, opens a new one and calls `on_lost`: whatever the owner derived from notifications
may be stale, so the owner looks again in full (a resync). Opening the new socket first means
no change after that look goes unseen.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from types import TracebackType

from vxnet.kernel import netlink as nl
from vxnet.nsenter import in_netns

log = logging.getLogger(__name__)

OnEvents = Callable[[list[nl.Event]], None]
OnLost = Callable[[OSError], None]


class EventSocket:
    """Notifications of `groups` (netlink `protocol`, NETLINK_ROUTE by default) delivered to
    `on_events` as lists of (type, buffer, payload offset, payload end), never empty.

    `skip_portid`: have the kernel leave out the notifications of that socket's own requests
    (it names the requester in them).
    `on_lost(error)`: notifications were lost (ENOBUFS) or the socket failed; it is called
    once a new socket is listening, or, if none could be opened, with `error` set and the
    socket closed (the owner may raise it, to be restarted).

    open() and close() run on the event loop thread (a context manager, or run() from a task).
    """

    def __init__(self, groups: Iterable[int], on_events: OnEvents,
                 on_lost: OnLost | None = None, *, netns: str | None = None,
                 protocol: int = socket.NETLINK_ROUTE, rcvbuf: int = 8 << 20,
                 skip_portid: int = 0, datagrams: int = 1000,
                 name: str = "netlink notifications") -> None:
        self.groups, self.protocol, self.rcvbuf = tuple(groups), protocol, rcvbuf
        self.on_events, self.on_lost = on_events, on_lost
        self.netns, self.skip_portid, self.datagrams, self.name = \
            netns, skip_portid, datagrams, name
        self.lost = 0  # times notifications were lost or the socket failed
        self.overflows = 0  # of which ENOBUFS
        self.error: OSError | None = None  # a new socket could not be opened after a failure
        # the open socket and the loop reading it: set, and cleared, together
        self._reading: tuple[nl.RtnlSocket, asyncio.AbstractEventLoop] | None = None

    @property
    def is_open(self) -> bool:
        return self._reading is not None

    def open(self) -> None:
        """Subscribe, and read whenever something is queued. Idempotent."""
        if self._reading is not None:
            return
        loop = asyncio.get_running_loop()
        with in_netns(self.netns):
            sock = nl.RtnlSocket(self.groups, rcvbuf=self.rcvbuf, protocol=self.protocol)
        try:
            if self.skip_portid:
                sock.drop_echoes(self.skip_portid)
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._reading, self.error = (sock, loop), None

    def close(self) -> None:
        """Unsubscribe. Idempotent."""
        reading, self._reading = self._reading, None
        if reading is not None:
            sock, loop = reading
            loop.remove_reader(sock.fileno())
            sock.close()

    def __enter__(self) -> EventSocket:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def run(self) -> None:
        """Listen until cancelled (for a task of its own)."""
        with self:
            await asyncio.Event().wait()

    def _readable(self) -> None:
        reading = self._reading
        if reading is None:
            return
        sock = reading[0]
        events: list[nl.Event] = []
        lost: OSError | None = None
        try:
            # extend keeps what came before a failure: it is delivered, then the loss handled
            events.extend(sock.recv_events(self.datagrams))
        except OSError as e:
            lost = e
        if events:
            self.on_events(events)
        if lost is not None and self._reading is reading:  # not closed by on_events meanwhile
            self._reopen(lost)

    def _reopen(self, lost: OSError) -> None:
        self.lost += 1
        self.overflows += lost.errno == errno.ENOBUFS
        self.close()
        try:
            self.open()
        except OSError as e:
            log.error("%s: %s; no new socket: %s", self.name, lost, e)
            self.error = e
        else:
            log.warning("%s: %s; new socket and full resync", self.name, lost)
        if self.on_lost is not None:
            self.on_lost(lost)
