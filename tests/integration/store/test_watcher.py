import asyncio
import ipaddress as ipa

from tests.waiting import SOON, until
from vxnet.store.lease import LeaseAttrs
from vxnet.store.store import EventKind
from vxnet.store.watcher import LeaseWatcher, list_leases


def value(i: int) -> bytes:
    return LeaseAttrs(ipa.ip_address(f"198.51.100.{i}"), f"0e:00:00:00:00:{i:02x}").encode()


async def collect(watcher, out: list, stop: asyncio.Event):
    async for ev in watcher.events():
        out.append(ev)
        if stop.is_set():
            return


async def test_snapshot_then_typed_events(etcd, paths):
    await etcd.put(paths.subnet("10.244.1.0-24"), value(1))
    await etcd.put(paths.subnet("10.244.9.0-24"), b"{broken")
    w = LeaseWatcher(etcd, paths)
    snap = await w.snapshot()
    assert list(snap.leases) == ["10.244.1.0-24"] and list(snap.invalid) == ["10.244.9.0-24"]
    got: list = []
    task = asyncio.create_task(collect(w, got, asyncio.Event()))
    try:
        await etcd.put(paths.subnet("10.244.2.0-24"), value(2))
        await etcd.put(paths.subnet("10.244.2.0-24"), value(2))  # same value: no event
        await etcd.put(paths.subnet("10.244.2.0-24"), value(3))
        await etcd.put(paths.subnet("10.244.1.0-24"), b"[]")  # valid -> garbage
        await etcd.delete(paths.subnet("10.244.2.0-24"))
        await until(lambda: len(got) >= 5, 15)
    finally:
        task.cancel()
    assert [(e.kind, e.key) for e in got] == [
        (EventKind.ADDED, "10.244.2.0-24"),
        (EventKind.CHANGED, "10.244.2.0-24"),
        (EventKind.REMOVED, "10.244.1.0-24"),
        (EventKind.INVALID, "10.244.1.0-24"),
        (EventKind.REMOVED, "10.244.2.0-24"),
    ]
    assert got[1].lease.attrs.public_ip == ipa.ip_address("198.51.100.3")
    assert got[4].lease is None  # the watch keeps no decoded lease: the key says it all
    assert "not a JSON object" in str(got[3].error)


async def test_etcd_restart_mid_watch_loses_and_repeats_nothing(etcd_server, etcd, paths):
    w = LeaseWatcher(etcd, paths)
    await w.snapshot()
    got: list = []
    task = asyncio.create_task(collect(w, got, asyncio.Event()))
    try:
        await etcd.put(paths.subnet("10.244.1.0-24"), value(1))
        await until(lambda: len(got) == 1, 15)
        await asyncio.to_thread(etcd_server.stop)
        await until(lambda: w.rewatches >= 1, SOON, "the watch noticing the outage")
        await asyncio.to_thread(etcd_server.start)

        async def put(i: int) -> bool:  # the test's own client may need to reconnect too
            try:
                await etcd.put(paths.subnet(f"10.244.{i}.0-24"), value(i))
            except Exception:
                return False
            return True

        for i in range(2, 12):
            await until(lambda i=i: put(i), SOON, f"etcd taking put {i}")
        await etcd.delete(paths.subnet("10.244.1.0-24"))
        # a last write: events come in revision order, so any repeat of those above would
        # arrive before it
        await etcd.put(paths.subnet("10.244.99.0-24"), value(99))
        await until(lambda: got and got[-1].key == "10.244.99.0-24", 15, "the last write")
    finally:
        task.cancel()
    assert [(e.kind, e.key) for e in got] == (
        [(EventKind.ADDED, "10.244.1.0-24")]
        + [(EventKind.ADDED, f"10.244.{i}.0-24") for i in range(2, 12)]
        + [(EventKind.REMOVED, "10.244.1.0-24"), (EventKind.ADDED, "10.244.99.0-24")])
    assert w.rewatches >= 1


async def test_compaction_past_the_watcher_is_recovered_by_relisting(etcd, paths):
    for i in (1, 2, 3):
        await etcd.put(paths.subnet(f"10.244.{i}.0-24"), value(i))
    w = LeaseWatcher(etcd, paths)
    await w.snapshot()
    # While the watcher is not watching: one removed, one changed, one added, then compacted.
    await etcd.delete(paths.subnet("10.244.1.0-24"))
    await etcd.put(paths.subnet("10.244.2.0-24"), value(22))
    await etcd.put(paths.subnet("10.244.4.0-24"), value(4))
    await etcd.put(paths.subnet("10.244.4.0-24"), value(44))
    _, rev = await etcd.get_prefix(paths.subnets)
    await etcd.compact(rev)
    got: list = []
    task = asyncio.create_task(collect(w, got, asyncio.Event()))
    try:
        await until(lambda: len(got) >= 3, 15)
        await etcd.put(paths.subnet("10.244.5.0-24"), value(5))  # and the watch goes on
        await until(lambda: len(got) >= 4, 15)
    finally:
        task.cancel()
    assert sorted((e.kind.value, e.key) for e in got[:3]) == [
        ("added", "10.244.4.0-24"), ("changed", "10.244.2.0-24"), ("removed", "10.244.1.0-24")]
    assert (got[3].kind, got[3].key) == (EventKind.ADDED, "10.244.5.0-24")
    assert w.relists == 1
    assert set(w.keys) == {"10.244.2.0-24", "10.244.3.0-24", "10.244.4.0-24", "10.244.5.0-24"}


async def test_a_frozen_member_is_noticed_and_the_watch_resumes_after(etcd_server, etcd, paths):
    """A member that stops answering (SIGSTOP: the TCP connection stays up, nothing comes
    back) must not leave the watch silently blind."""
    import os
    import signal
    import time

    from vxnet.errors import StoreUnavailable

    revision = await etcd.put(paths.subnet("10.244.1.0-24"), value(1))
    # from the put's own revision: its event arriving says the watch is created; then it idles
    stream = etcd.watch_prefix(paths.subnets, revision, silence=0.5)
    await asyncio.wait_for(stream.__anext__(), 5)
    first = asyncio.ensure_future(stream.__anext__())
    os.kill(etcd_server.proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        try:
            await asyncio.wait_for(first, 15)
            raise AssertionError("a frozen member delivered an event")
        except StoreUnavailable as e:
            assert "silent" in str(e) or "watch" in str(e)
        assert time.monotonic() - t0 < 5  # read asked after 0.5 s of silence, given up 0.5 s later
    finally:
        os.kill(etcd_server.proc.pid, signal.SIGCONT)
    w = LeaseWatcher(etcd, paths)
    w.adopt(await list_leases(etcd, paths))
    got: list = []
    task = asyncio.create_task(collect(w, got, asyncio.Event()))
    try:
        await etcd.put(paths.subnet("10.244.2.0-24"), value(2))
        await until(lambda: [e.key for e in got] == ["10.244.2.0-24"], 15)
    finally:
        task.cancel()


async def test_a_prefix_is_listed_page_by_page_at_one_revision(etcd, paths):
    """The start-up listing comes a page at a time (never the whole answer in memory), every
    page at the first page's revision: a write between pages is not half in the listing."""
    for i in range(1, 6):
        await etcd.put(paths.subnet(f"10.244.{i}.0-24"), value(i))
    pages = etcd.prefix_pages(paths.subnets, page=2)
    first, revision = await anext(pages)
    await etcd.put(paths.subnet("10.244.3.0-24"), value(33))  # after the listing's revision
    await etcd.put(paths.subnet("10.244.6.0-24"), value(6))
    rest = [(kvs, rev) async for kvs, rev in pages]
    assert [len(first)] + [len(kvs) for kvs, _ in rest] == [2, 2, 1]
    assert {rev for _, rev in rest} == {revision}
    listed = {kv.key: kv.value for kvs in [first, *(k for k, _ in rest)] for kv in kvs}
    assert listed[paths.subnet("10.244.3.0-24")] == value(3)
    assert paths.subnet("10.244.6.0-24") not in listed
    snap = await list_leases(etcd, paths)  # and the whole of it, now
    assert len(snap.leases) == 6 and snap.revision > revision
