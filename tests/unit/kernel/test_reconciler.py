"""Fault injection for the kernel side of the runtime (issue 10): the reconciler over a fake
kernel that fails writes, raises from batches and dumps, and changes behind our back. Every
test here failed on the runtime before the reconciler (the process exited, or work was lost
until the next periodic resync)."""

import asyncio
import errno
import ipaddress as ipa
import socket
from dataclasses import dataclass

import pytest

from tests.unit.kernel.fakekernel import FakeKernel
from tests.unit.kernel.test_dataplane import peer, plane
from tests.waiting import until
from vxnet.kernel import dataplane, nhids
from vxnet.kernel import netlink as nl
from vxnet.kernel.dataplane import Dataplane
from vxnet.kernel.reconciler import Reconciler


class Seen:
    def __init__(self):
        self.passes, self.latencies = [], []

    def on_pass(self, version, kind, result):
        self.passes.append((version, kind, result))

    def on_event_latency(self, seconds):
        self.latencies.append(seconds)


@dataclass(eq=False)
class Planes:
    """An overlay as the reconciler sees it: the device is not the subject here."""

    plane: Dataplane
    busy: bool = False


def overlay(kernel, **spec) -> Planes:
    return Planes(plane(kernel, **spec))


@pytest.fixture
async def running():
    """A reconciler over one overlay on a fake kernel, running; stopped afterwards."""
    k = FakeKernel()
    ov = overlay(k)
    seen = Seen()
    r = Reconciler([ov], seen)
    task = asyncio.create_task(r.run())
    yield k, ov, r, seen
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_that_raises_loses_nothing_and_the_loop_lives_on(running):
    k, ov, r, _ = running
    ov.plane.set_peers([peer(2), peer(3)])
    await r.resync_now("first")
    k.batch_raises = OSError(errno.ENOBUFS, "No buffer space available")
    ov.plane.add_peer(peer(4))
    r.kick()
    await until(lambda: r.errors >= 1)
    assert ov.plane.pending or r._resync  # the work is still there, and a resync pending
    k.batch_raises = None
    await until(lambda: "p4" in ov.plane.programmed())
    assert ov.plane.drift() == {}


async def test_a_dump_interrupted_five_times_is_retried_not_fatal(running):
    k, ov, r, _ = running
    ov.plane.set_peers([peer(2)])
    await r.resync_now("first")
    k.dump_raises = nl.NetlinkError(errno.EINTR, "dump 26", "interrupted five times")
    r.request_resync("periodic")
    await until(lambda: r.errors >= 1)
    k.dump_raises = None
    dumps = k.dumps
    await until(lambda: k.dumps > dumps + 2)  # the resync ran again, to the end
    await until(lambda: ov.plane.drift() == {} and not r._resync)


async def test_a_failed_write_is_retried_without_waiting_for_the_periodic_resync(running):
    k, ov, r, _ = running
    k.fail = lambda e: errno.EBUSY if "route" in str(e) else 0
    ov.plane.set_peers([peer(2)])
    await r.resync_now("first")
    assert ov.plane.drift()["route"]["missing"] == ["10.244.2.0/24"]
    k.fail = lambda e: 0
    await until(lambda: ov.plane.drift() == {})  # backoff, then the same keys again


async def test_the_kernel_changing_behind_our_back_is_repaired_from_the_notification(running):
    k, ov, r, _ = running
    ov.plane.set_peers([peer(2), peer(3)])
    await r.resync_now("first")
    mtype, body = k.deleted_behind_our_back("route")
    assert ov.plane.on_message(mtype, body, 0, len(body))  # as the monitor hands it over
    r.kick()
    await until(lambda: len(k.state["route"]) == 2)


async def test_no_nexthop_id_left_rejects_that_peer_only(monkeypatch):
    monkeypatch.setattr(nhids, "SPAN", 3)
    k = FakeKernel()
    ov = overlay(k)
    ov.plane.set_peers([peer(i) for i in range(2, 6)])  # four peers, three ids
    await Reconciler([ov]).resync_now("first")
    assert len(ov.plane.peers) == 3 and len(ov.plane.programmed()) == 3
    (_, why), = ov.plane.rejected.items()
    assert "no free nexthop id left" in why
    assert ov.plane.add_peer(peer(9)) is not None  # later ones too: a reason, not a raise


async def test_a_failing_entry_is_forgotten_with_its_peer():
    k = FakeKernel()
    k.fail = lambda e: errno.EBUSY if "route" in str(e) else 0
    ov = overlay(k)
    ov.plane.set_peers([peer(2)])
    await Reconciler([ov]).resync_now("first")
    assert sum(t.failing for t in ov.plane.tables) == 1
    ov.plane.remove_peer("p2")
    assert sum(t.failing for t in ov.plane.tables) == 0


async def test_a_big_first_sync_lets_the_event_loop_in_between_steps():
    k = FakeKernel()
    ov = overlay(k, network=ipa.ip_network("10.0.0.0/8"),
                 local_subnet=ipa.ip_network("10.255.255.0/24"))
    peers = []
    for i in range(20_000):
        sub = ipa.ip_network((0x0A000000 + (i << 8), 24))
        peers.append(dataplane.Peer.of(f"p{i}", sub, ipa.ip_address("198.51.100.2"),
                                    f"0e:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                                    f"{i & 255:02x}:01"))
    ov.plane.set_peers(peers)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    writes = await Reconciler([ov]).resync_now("first")
    t.cancel()
    assert writes == 80_000
    # 20 000 peers built in chunks, four dumps, 80 000 writes in chunks of 2000: the loop
    # turned between every step (the HTTP API, watch and keepalive run there)
    assert ticks - before >= 80_000 // dataplane.CHUNK + 20_000 // dataplane.CHUNK


def test_netlink_requests_have_a_deadline():
    s = nl.RtnlSocket(timeout=0.05)
    try:
        assert s.sock.gettimeout() == 0.05
        with pytest.raises(TimeoutError):
            s.sock.recv(100)  # nothing asked, nothing comes: the kernel "never answers"
    finally:
        s.close()
    events = nl.RtnlSocket(groups=(nl.RTNLGRP_LINK,))
    try:
        assert events.sock.gettimeout() == 0.0  # read only when ready: never blocks the loop
    finally:
        events.close()


async def test_lost_notifications_mean_a_new_socket_and_a_full_resync(monkeypatch):
    from vxnet.kernel import monitor as monitor_mod

    class FakeEvents:
        made = []

        def __init__(self, *a, **kw):
            FakeEvents.made.append(self)
            self.r, self.w = socket.socketpair()

        def fileno(self):
            return self.r.fileno()

        def close(self):
            self.r.close()
            self.w.close()

        def recv_events(self, datagrams=1000):
            raise OSError(errno.ENOBUFS, "No buffer space available")

    monkeypatch.setattr(monitor_mod.nl, "RtnlSocket", FakeEvents)
    ov = overlay(FakeKernel())
    r = Reconciler([ov])
    mon = monitor_mod.Monitor([ov], r)
    mon.open()
    r._resync.clear()
    FakeEvents.made[0].w.send(b"!")  # readable: the kernel tells us the socket overflowed
    await until(lambda: mon.overflows)
    assert mon.overflows == 1 and len(FakeEvents.made) == 2 and r._resync == {ov: "overflow"}
    mon._close()
