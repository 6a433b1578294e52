"""Snapshot + watch of all subnet leases, as typed events, surviving etcd restarts and compaction.

The contract: after snapshot(), events() yields every change exactly once, in order. A dropped
stream resumes from the last revision seen (events already delivered at that revision are
skipped, since one revision may hold several keys); a compacted start revision is recovered by
re-listing and turning the difference into events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, KeysView
from dataclasses import dataclass, field

from vxnet.backoff import Backoff
from vxnet.errors import LeaseDecodeError, RevisionCompacted, StoreUnavailable
from vxnet.store.etcd import DELETE, Etcd, WatchEvent
from vxnet.store.lease import SubnetKey, decode_lease
from vxnet.store.paths import Paths
from vxnet.store.store import EventKind, LeaseEvent, Snapshot

log = logging.getLogger(__name__)
CHUNK = 200  # events decoded per loop turn: a 5 000-key transaction takes 25


async def lease_pages(etcd: Etcd, paths: Paths) -> AsyncIterator[Snapshot]:
    """All of `subnets/` at one revision, each page decoded as etcd sends it; undecodable
    entries reported, not raised."""
    cut = len(paths.subnets)
    async for kvs, revision in etcd.prefix_pages(paths.subnets):
        page = Snapshot({}, {}, revision)
        for kv in kvs:
            key = kv.key[cut:].decode(errors="replace")
            page.create_revisions[key] = kv.create_revision
            try:
                lease = page.leases[key] = decode_lease(key, kv.value, kv.lease, kv.mod_revision)
                page.keys[key] = lease.key
            except LeaseDecodeError as e:
                page.invalid[key] = e
                with contextlib.suppress(LeaseDecodeError):  # a garbled value holds a subnet
                    page.keys[key] = SubnetKey.parse(key)
        yield page


async def list_leases(etcd: Etcd, paths: Paths) -> Snapshot:
    """All of `subnets/` at one revision, as one snapshot."""
    snap = Snapshot({}, {}, 0)
    async for page in lease_pages(etcd, paths):
        snap.revision = page.revision
        snap.leases.update(page.leases)
        snap.invalid.update(page.invalid)
        snap.keys.update(page.keys)
        snap.create_revisions.update(page.create_revisions)
    return snap


@dataclass(slots=True)
class _State:
    # lease key -> its fingerprint: the decoded lease lives on only as the peer built from it
    known: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, LeaseDecodeError] = field(default_factory=dict)
    revision: int = 0
    seen_at_revision: set[str] = field(default_factory=set)


class LeaseWatcher:
    def __init__(self, etcd: Etcd, paths: Paths) -> None:
        self.etcd, self.paths = etcd, paths
        self._s = _State()
        self.relists = 0
        self.rewatches = 0

    @property
    def keys(self) -> KeysView[str]:
        """The keys of the valid leases, as the watch last saw them."""
        return self._s.known.keys()

    @property
    def revision(self) -> int:
        return self._s.revision

    def _name(self, raw: bytes) -> str:
        return raw[len(self.paths.subnets):].decode(errors="replace")

    async def snapshot(self) -> Snapshot:
        """All leases now, and the revision events() will continue from."""
        return self.adopt(await list_leases(self.etcd, self.paths))

    async def pages(self) -> AsyncIterator[Snapshot]:
        """All leases now, page by page as etcd sends them (lease_pages); once the last is
        handed over, events() continues from their revision."""
        s = _State()
        async for page in lease_pages(self.etcd, self.paths):
            s.revision = page.revision
            s.known.update(_fingerprints(page))
            s.invalid.update(page.invalid)
            yield page
        self._s = s

    def adopt(self, snap: Snapshot) -> Snapshot:
        """Continue from a listing made elsewhere (the lease manager's): events() resumes at
        its revision + 1, so nothing after it is missed."""
        self._s = _State(_fingerprints(snap), dict(snap.invalid), snap.revision)
        return snap

    async def batches(self) -> AsyncIterator[list[LeaseEvent]]:
        """Every change, in order, a batch per etcd response (or one per re-list); empty
        batches are skipped. Survives dropped streams, silent members and compaction."""
        backoff = Backoff(0.2, 5)
        while True:
            s = self._s
            start = s.revision if s.seen_at_revision else s.revision + 1
            try:
                async for events in self.etcd.watch_prefix(self.paths.subnets, start):
                    backoff.reset()
                    for at in range(0, len(events), CHUNK):  # one big txn: several turns
                        if at:
                            await asyncio.sleep(0)
                        out = [le for ev in events[at:at + CHUNK] for le in self._apply(ev)]
                        if out:
                            yield out
                raise StoreUnavailable("watch stream ended")
            except StoreUnavailable as e:
                self.rewatches += 1
                log.warning("lease watch: %s; resuming from revision %d", e, s.revision)
                await backoff.sleep()
            except RevisionCompacted as e:
                self.relists += 1
                log.warning("lease watch: revision %d compacted (%s); re-listing", start, e)
                try:
                    out = await self._relist()
                except StoreUnavailable as e2:
                    log.warning("lease re-list: %s", e2)
                    await backoff.sleep()
                    continue
                if out:
                    yield out

    async def events(self) -> AsyncIterator[LeaseEvent]:
        """The same, one event at a time."""
        async for batch in self.batches():
            for ev in batch:
                yield ev

    def _apply(self, ev: WatchEvent) -> list[LeaseEvent]:
        """One mvccpb.Event (type PUT or DELETE, kv) folded into the state."""
        s = self._s
        key, rev = self._name(ev.kv.key), ev.kv.mod_revision
        if rev == s.revision and key in s.seen_at_revision:
            return []  # delivered before the stream dropped
        if rev != s.revision:
            s.revision, s.seen_at_revision = rev, set()
        s.seen_at_revision.add(key)
        if ev.type == DELETE:
            was_invalid = s.invalid.pop(key, None) is not None
            if s.known.pop(key, None) is None and not was_invalid:
                return []
            return [LeaseEvent(EventKind.REMOVED, key, None, rev)]
        try:
            lease = decode_lease(key, ev.kv.value, ev.kv.lease, rev)
        except LeaseDecodeError as e:
            s.invalid[key] = e
            invalid = LeaseEvent(EventKind.INVALID, key, None, rev, e)
            # the peer's valid data is gone: stop routing to it rather than to stale data
            if s.known.pop(key, None) is None:
                return [invalid]
            return [LeaseEvent(EventKind.REMOVED, key, None, rev), invalid]
        s.invalid.pop(key, None)
        prev, s.known[key] = s.known.get(key), lease.fingerprint()
        if prev is None:
            return [LeaseEvent(EventKind.ADDED, key, lease, rev)]
        if prev == s.known[key]:
            return []  # a rewrite of the same value: nothing for anyone to do
        return [LeaseEvent(EventKind.CHANGED, key, lease, rev)]

    async def _relist(self) -> list[LeaseEvent]:
        snap = await list_leases(self.etcd, self.paths)
        s, rev = self._s, snap.revision
        known = _fingerprints(snap)
        out = [LeaseEvent(EventKind.REMOVED, k, None, rev) for k in s.known if k not in known]
        out += [LeaseEvent(EventKind.REMOVED, k, None, rev) for k in s.invalid
                if k not in snap.invalid and k not in known]
        for k, new in snap.leases.items():
            old = s.known.get(k)
            if old is None:
                out.append(LeaseEvent(EventKind.ADDED, k, new, rev))
            elif old != known[k]:
                out.append(LeaseEvent(EventKind.CHANGED, k, new, rev))
        out += [LeaseEvent(EventKind.INVALID, k, None, rev, e)
                for k, e in snap.invalid.items() if k not in s.invalid]
        self._s = _State(known, dict(snap.invalid), rev)
        return out


def _fingerprints(snap: Snapshot) -> dict[str, int]:
    return {k: lease.fingerprint() for k, lease in snap.leases.items()}
