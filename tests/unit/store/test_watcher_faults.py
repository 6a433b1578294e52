"""The lease watcher against a fake store that drops streams, compacts, times out and rejects
auth: every change is still delivered exactly once, in order, and nothing leaks."""

import asyncio

import pytest

from tests.unit.store.fakeetcd import FakeEtcd
from vxnet.store.lease import LeaseAttrs
from vxnet.store.paths import Paths
from vxnet.store.store import EventKind
from vxnet.store.watcher import LeaseWatcher, list_leases

PATHS = Paths("/t")


def value(i: int) -> str:
    import ipaddress

    return LeaseAttrs(ipaddress.ip_address(f"198.51.100.{i}"), f"0e:00:00:00:00:{i:02x}"
                      ).encode().decode()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    async def instant(self):
        await asyncio.sleep(0)
    monkeypatch.setattr("vxnet.backoff.Backoff.sleep", instant)


async def started(etcd: FakeEtcd) -> LeaseWatcher:
    w = LeaseWatcher(etcd, PATHS)
    w.adopt(await list_leases(etcd, PATHS))
    return w


async def take(w: LeaseWatcher, n: int, timeout: float = 2.0) -> list:
    out = []

    async def go():
        async for batch in w.batches():
            out.extend(batch)
            if len(out) >= n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


async def test_dropped_streams_and_timeouts_resume_where_they_left_off():
    etcd = FakeEtcd(PATHS.subnets)
    etcd.put("10.244.1.0-24", value(1))
    w = await started(etcd)
    for i in (2, 3, 4):
        etcd.put(f"10.244.{i}.0-24", value(i))
    etcd.script = ["timeout", "drop", "timeout", "deliver"]
    events = await take(w, 3)
    assert [e.key for e in events] == ["10.244.2.0-24", "10.244.3.0-24", "10.244.4.0-24"]
    assert all(e.kind is EventKind.ADDED for e in events)
    # resumed at the last revision seen (skipping what it delivered): nothing lost or doubled
    assert w.rewatches == 3 and etcd.watch_starts == [3, 3, 3, 3]


async def test_compaction_relists_and_turns_the_difference_into_events():
    etcd = FakeEtcd(PATHS.subnets)
    etcd.put("10.244.1.0-24", value(1))
    etcd.put("10.244.2.0-24", "{junk")
    w = await started(etcd)
    etcd.delete("10.244.1.0-24")
    etcd.delete("10.244.2.0-24")  # an invalid key going away must leave /v1/state too
    etcd.put("10.244.3.0-24", value(3))
    etcd.script = ["compact"]
    events = await take(w, 3)
    assert {(e.kind, e.key) for e in events} == {
        (EventKind.REMOVED, "10.244.1.0-24"), (EventKind.REMOVED, "10.244.2.0-24"),
        (EventKind.ADDED, "10.244.3.0-24")}
    assert w.relists == 1


async def test_deleting_an_invalid_key_is_an_event():
    etcd = FakeEtcd(PATHS.subnets)
    w = await started(etcd)
    etcd.put("10.244.5.0-24", "{junk")
    etcd.delete("10.244.5.0-24")
    events = await take(w, 2)
    assert [(e.kind, e.key) for e in events] == [(EventKind.INVALID, "10.244.5.0-24"),
                                                (EventKind.REMOVED, "10.244.5.0-24")]


async def test_refused_permissions_reach_the_caller_and_a_restart_resumes_exactly():
    from vxnet.errors import StoreAuthError

    etcd = FakeEtcd(PATHS.subnets)
    w = await started(etcd)
    etcd.put("10.244.6.0-24", value(6))
    etcd.script = ["auth"]
    with pytest.raises(StoreAuthError):  # the supervisor restarts the watch task
        await take(w, 1)
    etcd.put("10.244.7.0-24", value(7))
    events = await take(w, 2)  # the same watcher, restarted: nothing lost, nothing twice
    assert [e.key for e in events] == ["10.244.6.0-24", "10.244.7.0-24"]
