"""EventSocket: the notification plumbing of the monitor, the underlay watch and the allow-list.
The netlink socket is replaced by a socketpair the test makes readable and a queue of what its
recv_events yields or raises (the real thing, ENOBUFS included, is in the kernel integration
tests)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterable, Iterator

import pytest

from tests.waiting import until
from vxnet.kernel import netlink as nl
from vxnet.kernel.events import EventSocket


class FakeSocket:
    """RtnlSocket as EventSocket uses it."""

    made: list[FakeSocket] = []
    refuse: OSError | None = None  # the next sockets cannot be made

    def __init__(self, groups: Iterable[int] = (), rcvbuf: int = 0, timeout: float = 10.0,
                 protocol: int = 0) -> None:
        if FakeSocket.refuse is not None:
            raise FakeSocket.refuse
        self.groups, self.rcvbuf, self.protocol = tuple(groups), rcvbuf, protocol
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.queue: list[nl.Event | OSError] = []
        self.skips: list[int] = []
        self.closed = False
        FakeSocket.made.append(self)

    def fileno(self) -> int:
        return self.r.fileno()

    def close(self) -> None:
        self.closed = True
        self.r.close()
        self.w.close()

    def push(self, *items: nl.Event | OSError) -> None:
        self.queue.extend(items)
        self.w.send(b"!")  # readable

    def drop_echoes(self, portid: int) -> None:
        self.skips.append(portid)

    def recv_events(self, datagrams: int = 1000) -> Iterator[nl.Event]:
        self.r.recv(4096)
        while self.queue:
            item = self.queue.pop(0)
            if isinstance(item, OSError):
                raise item
            yield item


@pytest.fixture(autouse=True)
def fake_sockets(monkeypatch: pytest.MonkeyPatch) -> list[FakeSocket]:
    FakeSocket.made, FakeSocket.refuse = [], None
    monkeypatch.setattr(nl, "RtnlSocket", FakeSocket)  # as events.py finds it
    return FakeSocket.made


def ev(n: int) -> nl.Event:
    return nl.RTM_NEWNEIGH, bytes([n]), 0, 1


class Seen:
    def __init__(self) -> None:
        self.batches: list[list[nl.Event]] = []
        self.lost: list[OSError] = []

    def events(self, batch: list[nl.Event]) -> None:
        self.batches.append(list(batch))

    def on_lost(self, e: OSError) -> None:
        self.lost.append(e)


async def test_notifications_reach_the_callback_in_one_batch_per_turn(
        fake_sockets: list[FakeSocket]) -> None:
    seen = Seen()
    with EventSocket((nl.RTNLGRP_NEIGH,), seen.events, seen.on_lost, rcvbuf=4096,
                     skip_portid=77) as es:
        [sock] = fake_sockets
        assert es.is_open and sock.groups == (nl.RTNLGRP_NEIGH,) and sock.rcvbuf == 4096
        sock.push(ev(1), ev(2))
        await until(lambda: seen.batches)
        assert seen.batches == [[ev(1), ev(2)]] and sock.skips == [77]
    assert sock.closed and not es.is_open and not seen.lost


async def test_lost_notifications_mean_a_new_socket_then_on_lost(
        fake_sockets: list[FakeSocket]) -> None:
    seen = Seen()
    order: list[str] = []

    def on_lost(e: OSError) -> None:
        order.append(f"lost, {len(fake_sockets)} sockets")
        seen.on_lost(e)

    es = EventSocket((nl.RTNLGRP_LINK,), seen.events, on_lost)
    es.open()
    try:
        first = fake_sockets[0]
        overflow = OSError(errno.ENOBUFS, "No buffer space available")
        first.push(ev(1), overflow)
        await until(lambda: seen.lost)
        # what came before the loss is delivered; the owner hears of the loss only once a new
        # socket listens, so its full look misses nothing
        assert seen.batches == [[ev(1)]] and seen.lost == [overflow]
        assert order == ["lost, 2 sockets"] and first.closed and not fake_sockets[1].closed
        assert es.lost == es.overflows == 1 and es.error is None
        fake_sockets[1].push(OSError(errno.EBADF, "Bad file descriptor"))  # any other failure
        await until(lambda: len(seen.lost) == 2)
        assert es.lost == 2 and es.overflows == 1 and len(fake_sockets) == 3
        fake_sockets[2].push(ev(2))
        await until(lambda: len(seen.batches) == 2)
    finally:
        es.close()
    assert all(s.closed for s in fake_sockets)


async def test_no_new_socket_leaves_it_closed_with_the_error(
        fake_sockets: list[FakeSocket]) -> None:
    seen = Seen()
    es = EventSocket((nl.RTNLGRP_LINK,), seen.events, seen.on_lost)
    es.open()
    FakeSocket.refuse = OSError(errno.ENOENT, "netns gone")
    fake_sockets[0].push(OSError(errno.ENOBUFS, "No buffer space available"))
    await until(lambda: seen.lost)
    assert es.error is FakeSocket.refuse and not es.is_open and fake_sockets[0].closed
    es.close()  # nothing left to close: fine
    FakeSocket.refuse = None
    es.open()  # a later open (the owner restarted) starts afresh
    assert es.is_open and es.error is None
    es.close()


async def test_closed_from_the_callback_it_does_not_reopen(
        fake_sockets: list[FakeSocket]) -> None:
    lost: list[OSError] = []
    es: EventSocket

    def stop(_: list[nl.Event]) -> None:
        es.close()

    es = EventSocket((nl.RTNLGRP_LINK,), stop, lost.append)
    es.open()
    fake_sockets[0].push(ev(1), OSError(errno.ENOBUFS, "No buffer space available"))
    await until(lambda: fake_sockets[0].closed)
    await asyncio.sleep(0.01)
    assert len(fake_sockets) == 1 and not lost and not es.is_open


async def test_run_listens_until_cancelled(fake_sockets: list[FakeSocket]) -> None:
    seen = Seen()
    es = EventSocket((nl.RTNLGRP_LINK,), seen.events, protocol=12)
    task = asyncio.create_task(es.run())
    await until(lambda: es.is_open)
    assert fake_sockets[0].protocol == 12
    fake_sockets[0].push(ev(5))
    await until(lambda: seen.batches == [[ev(5)]])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not es.is_open and fake_sockets[0].closed


async def test_open_twice_is_one_socket(fake_sockets: list[FakeSocket]) -> None:
    es = EventSocket((nl.RTNLGRP_LINK,), Seen().events)
    es.open()
    es.open()
    assert len(fake_sockets) == 1
    es.close()
    es.close()
