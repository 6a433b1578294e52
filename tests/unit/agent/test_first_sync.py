"""Start-up's first sync over a fake store and a fake kernel: page by page, and a listing the
store breaks off started again without leaving behind what it no longer names."""

from __future__ import annotations

import ipaddress as ipa
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from tests.unit.kernel.fakekernel import FakeKernel
from tests.unit.kernel.test_dataplane import SPEC
from vxnet.agent.peers import PeerFeed
from vxnet.agent.startup import _first_sync, since_process_start
from vxnet.agent.state import Startup
from vxnet.errors import LeaseDecodeError, StoreUnavailable
from vxnet.kernel.dataplane import Dataplane
from vxnet.kernel.reconciler import Reconciler
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey
from vxnet.store.store import Snapshot


@dataclass(eq=False)
class FakeOverlay:
    plane: Dataplane
    busy: bool = False


class FakeOverlays:
    def __init__(self, ov: FakeOverlay) -> None:
        self.ov = ov

    def __iter__(self) -> Iterator[FakeOverlay]:
        return iter([self.ov])

    def items(self) -> Iterator[tuple[int, FakeOverlay]]:
        return iter([(4, self.ov)])


def lease(i: int, mac: int | None = None) -> tuple[str, Lease]:
    key = SubnetKey(ipa.ip_network(f"10.244.{i}.0/24"))
    return str(key), Lease(key, LeaseAttrs(ipa.ip_address(f"198.51.100.{i}"),
                                           f"0e:00:00:00:00:{mac or i:02x}"), 1, i)


def page(*ids: int, invalid: tuple[str, ...] = (), more: tuple[tuple[str, Lease], ...] = ()
         ) -> Snapshot:
    return Snapshot(dict([*(lease(i) for i in ids), *more]),
                    {k: LeaseDecodeError(k, "garbage") for k in invalid}, 1)


class FakeStore:
    """Hands out listings: each a list of pages, a page of None breaking it off."""

    def __init__(self, *listings: list[Snapshot | None]) -> None:
        self.listings = list(listings)

    async def listing(self) -> AsyncIterator[Snapshot]:
        for p in self.listings.pop(0):
            if p is None:
                raise StoreUnavailable("etcd went away mid-listing")
            yield p


async def first_sync(store: FakeStore, kernel: FakeKernel
                     ) -> tuple[Dataplane, PeerFeed, int, int]:
    """The first sync of node 1 (its own lease is 10.244.1.0/24): plane, feed, writes, pages."""
    dp = Dataplane(kernel, SPEC)
    overlays = FakeOverlays(FakeOverlay(dp))
    feed = PeerFeed(overlays)
    writes, pages, laps = await _first_sync(Startup("n1"), store, "10.244.1.0-24", overlays,
                                            feed, None, Reconciler(list(overlays)))
    # what its log line says the time went to (no allow-list here)
    assert list(laps.seconds) == ["listing", "admission", "kernel"]
    assert str(laps).startswith(f"{sum(laps.seconds.values()):.2f} s (listing ")
    return dp, feed, writes, pages


def test_the_process_age_is_read_from_proc():
    age = since_process_start()
    assert age is not None and 0 <= age < time.monotonic()  # and it did not start before boot


async def test_each_page_is_written_as_it_comes_and_the_own_lease_left_out():
    k = FakeKernel()
    dp, _, writes, pages = await first_sync(FakeStore([page(1, 2, 3), page(4, 5)]), k)
    assert pages == 2 and sorted(dp.peers) == [lease(i)[0] for i in (2, 3, 4, 5)]
    assert writes == 4 * 4 and len(k.state["route"]) == 4 and dp.drift() == {}


async def test_a_broken_off_listing_is_read_again_and_what_it_alone_named_goes():
    k = FakeKernel()
    dp, feed, _, pages = await first_sync(FakeStore(
        [page(2, 3, invalid=("10.244.8.0-24",)), None],
        # meanwhile 3 went, and 6 came with the VTEP MAC 3 had: not refused for 3's sake
        [page(2, 4, invalid=("10.244.9.0-24",)), page(5, more=(lease(6, mac=3),))]), k)
    assert pages == 2 and sorted(dp.peers) == [lease(i)[0] for i in (2, 4, 5, 6)]
    assert list(feed.invalid) == ["10.244.9.0-24"] and not dp.rejected
    assert len(k.state["route"]) == 4 and dp.drift() == {}
