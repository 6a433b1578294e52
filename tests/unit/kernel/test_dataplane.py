"""Dataplane logic over a fake kernel: order, idempotence, failure handling, id adoption."""

import errno
import ipaddress as ipa
import socket

from tests.unit.kernel.fakekernel import FakeKernel
from vxnet.kernel import netlink as nl
from vxnet.kernel.dataplane import Dataplane, PlaneSpec
from vxnet.kernel.mac import vtep_mac
from vxnet.kernel.peer import Peer
from vxnet.kernel.table import PassResult

SPEC = PlaneSpec(socket.AF_INET, ifindex=7, underlay_version=4,
                 local_subnet=ipa.ip_network("10.244.1.0/24"),
                 network=ipa.ip_network("10.244.0.0/16"), parent_ifindex=2,
                 parent_networks=(ipa.ip_network("198.51.100.0/24"),))


def peer(i: int, **kw) -> Peer:
    sub = ipa.ip_network(f"10.244.{i}.0/24")
    return Peer.of(f"p{i}", sub, kw.get("ip", ipa.ip_address(f"198.51.100.{i}")), vtep_mac(sub))


def plane(kernel=None, **spec):
    from dataclasses import replace
    return Dataplane(kernel or FakeKernel(), replace(SPEC, **spec))


def test_nothing_is_written_before_the_first_resync():
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(2)])
    assert dp.apply().total == 0 and k.requests == 0


def test_sets_go_l2_first_and_deletes_l3_first():
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(2)])
    dp.resync()
    assert [line.split()[1] for line in k.log] == ["fdb", "neigh", "nexthop", "route"]
    k.log.clear()
    dp.set_peers([])
    dp.apply()
    assert [line.split()[1] for line in k.log] == ["route", "nexthop", "neigh", "fdb"]
    assert all(not t for t in k.state.values())


def test_second_pass_and_new_process_make_no_writes():
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(i) for i in range(2, 40)])
    assert dp.resync().total == 38 * 4
    assert dp.resync().total == 0
    again = plane(k)  # a restart: empty caches, same kernel, peers in another order
    again.set_peers([peer(i) for i in reversed(range(2, 40))])
    assert again.resync().total == 0  # nexthop ids were adopted, not reassigned


def staged(dp: Dataplane, pages: list[list[Peer]]) -> int:
    """Start-up's first sync, page by page (agent/startup.py): the writes."""
    result = PassResult()
    for n, page in enumerate(pages):
        for p in page:
            dp.add_peer(p)
        for _ in (dp.apply_steps if n else dp.resync_steps)(result, keep_extra=True):
            pass
    for _ in dp.apply_steps(result):
        pass
    return result.total


def test_a_restart_programming_page_by_page_writes_nothing_and_keeps_later_pages():
    k = FakeKernel()
    first = plane(k)
    first.set_peers([peer(i) for i in range(2, 40)])
    first.resync()
    before = {kind: dict(entries) for kind, entries in k.state.items()}
    again = plane(k)
    result = PassResult()
    for p in [peer(i) for i in range(2, 10)]:
        again.add_peer(p)
    for _ in again.resync_steps(result, keep_extra=True):  # page 1: the rest still in place
        pass
    assert result.total == 0 and k.state == before
    assert staged(plane(k), [[peer(i) for i in range(2, 20)], [peer(i) for i in range(20, 40)]]
                  ) == 0
    assert k.state == before  # every nexthop id adopted, though most came on a later page
    # a new peer on the first page takes no id a peer on a later page still routes through
    assert staged(plane(k), [[peer(50), *(peer(i) for i in range(2, 20))],
                             [peer(i) for i in range(20, 40)]]) == 4
    assert all(k.state[kind].items() >= entries.items() for kind, entries in before.items())


def test_page_by_page_what_no_lease_asks_for_goes_only_after_the_last_page():
    k = FakeKernel()
    first = plane(k)
    first.set_peers([peer(i) for i in range(2, 12)])
    first.resync()
    k.log.clear()
    dp = plane(k)
    for p in [peer(i) for i in (2, 3, 4, 40)]:  # a new peer on page 1, and 5..11 are gone
        dp.add_peer(p)
    result = PassResult()
    for _ in dp.resync_steps(result, keep_extra=True):
        pass
    assert k.log and not any(line.startswith("delete") for line in k.log)
    assert sum(line.startswith("set") for line in k.log) == 4  # the new peer's entries
    for _ in dp.apply_steps(result):
        pass
    assert sum(line.startswith("delete") for line in k.log) == 7 * 4
    assert dp.drift() == {} and len(k.state["route"]) == 4


def test_a_failed_write_stays_dirty_and_is_retried():
    k = FakeKernel()
    k.fail = lambda e: errno.EBUSY if "route" in str(e) else 0
    dp = plane(k)
    dp.set_peers([peer(2)])
    result = dp.resync()
    assert dict(result.writes) == {"fdb": 1, "neigh": 1, "nexthop": 1}
    assert len(result.failures) == 1 and "Device or resource busy" in result.failures[0]
    assert dp.drift() == {"route": {"missing": ["10.244.2.0/24"], "wrong": [], "extra": []}}
    k.fail = lambda e: 0
    assert dict(dp.apply().writes) == {"route": 1}
    assert dp.drift() == {}


def test_deleting_what_is_already_gone_counts_as_done():
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(2)])
    dp.resync()
    k.state["route"].clear()  # gone behind our back, and we never heard
    dp.set_peers([])
    result = dp.apply()
    assert result.failures == [] and result.writes["route"] == 1
    assert dp.route.kernel_size == 0


def test_changed_peer_rewrites_only_what_changed():
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(2)])
    dp.resync()
    k.log.clear()
    moved = Peer.of("p2", ipa.ip_network("10.244.2.0/24"), ipa.ip_address("198.51.100.99"),
                 vtep_mac(ipa.ip_network("10.244.2.0/24")))
    dp.add_peer(moved)
    assert dict(dp.apply().writes) == {"fdb": 1}
    assert k.log == ["set fdb 0e:18:0a:f4:02:00"]


def test_direct_routing_uses_the_parent_for_peers_on_our_segment():
    dp = plane(direct_routing=True)
    dp.set_peers([peer(2), peer(3, ip=ipa.ip_address("203.0.113.3"))])
    dp.resync()
    routes = dict(dp.route.desired_items())
    direct = routes[nl.route_key(ipa.ip_address("10.244.2.0").packed, 24)]
    _, _, nhid, oif, gateway = nl.route_fields(direct)
    assert (oif, gateway, nhid) == (2, ipa.ip_address("198.51.100.2").packed, 0)
    assert len(dict(dp.fdb.desired_items())) == 1  # only the peer across the router is encapsulated


def test_a_rejected_peer_can_come_back_valid():
    dp = plane()
    bad = Peer.of("p5", ipa.ip_network("10.244.1.0/24"), ipa.ip_address("198.51.100.5"),
               "0e:00:00:00:00:05")
    assert "overlaps our own" in dp.add_peer(bad)
    assert dp.add_peer(peer(5)) is None
    assert "p5" in dp.peers and "p5" not in dp.rejected


def test_what_was_offered_is_offered_again_when_the_rules_change():
    """The store keeps no decoded leases: after our address or subnet moved, the agent
    re-offers each plane what it was offered, so a peer refused for being on our old address
    is accepted now, and one accepted is checked against the new rules."""
    dp = plane(own_ips=frozenset({ipa.ip_address("198.51.100.5")}))
    assert "this node's own" in dp.add_peer(peer(5))
    dp.add_peer(peer(2))
    dp.rebind(7, own_ips=frozenset({ipa.ip_address("198.51.100.2")}))
    offered = dp.admission.offered()
    assert sorted(p.key for p in offered) == ["p2", "p5"]
    dp.set_peers([])
    dp.set_peers(offered)
    assert set(dp.peers) == {"p5"} and "this node's own" in dp.rejected["p2"]


def test_duplicate_vtep_mac_is_rejected():
    dp = plane()
    dp.add_peer(peer(2))
    twin = Peer.of("twin", ipa.ip_network("10.244.9.0/24"), ipa.ip_address("198.51.100.9"),
                peer(2).vtep_mac)
    assert "is already peer p2's" in dp.add_peer(twin)


def test_kernel_notifications_mark_only_their_key():
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(2), peer(3)])
    dp.resync()
    key, _ = next(dp.neigh.kernel_items())
    dp.neigh.kernel_changed(key, None)  # as the monitor does on RTM_DELNEIGH
    result = dp.apply()
    assert dict(result.writes) == {"neigh": 1}


def test_overlaps_of_other_lengths_are_found_both_ways():
    from vxnet.kernel.peer import SubnetSpace
    space = SubnetSpace()
    def span(text):
        n = ipa.ip_network(text)
        return n.version, int(n.network_address), n.prefixlen

    space.add(*span("10.244.8.0/24"), "a")
    assert space.conflict(*span("10.244.8.128/25")) == "a"  # inside an accepted one
    assert space.conflict(*span("10.244.0.0/20")) == "a"  # containing one
    assert space.conflict(*span("10.244.9.0/24")) is None
    assert space.conflict(*span("fd00::/8")) is None
    space.remove(*span("10.244.8.0/24"))
    assert space.conflict(*span("10.244.0.0/20")) is None


def test_a_resync_parses_dumps_only_when_they_changed(monkeypatch):
    """Dumps are the same bytes while nothing changes (neighbours' cache ages aside): a
    periodic resync compares their digest and files nothing; one changed behind our back (a
    lost notification) is parsed, and what it lacks is written again."""
    from vxnet.kernel.neighbours import L2Table
    from vxnet.kernel.routes import RouteTable
    k = FakeKernel()
    dp = plane(k)
    dp.set_peers([peer(2), peer(3)])
    dp.resync()
    dp.resync()  # the first after our writes parses: the cache changed since its dump
    filed = []
    real_file = RouteTable._file
    monkeypatch.setattr(RouteTable, "_file", lambda self, r: filed.append(1) or real_file(self, r))
    assert dp.resync().total == 0 and filed == []
    k.deleted_behind_our_back("route")  # and nobody tells us
    result = dp.resync()
    assert filed == [1] and dict(result.writes) == {"route": 1}
    k.deleted_behind_our_back("nexthop")  # its route goes too, in the real kernel
    k.state["route"].clear()
    assert dict(dp.resync().writes) == {"nexthop": 1, "route": 2}
    assert dp.resync().total == 0 and not dp.drift()
    dp.resync()
    offered = []
    real_offer = L2Table.offer
    monkeypatch.setattr(L2Table, "offer", lambda self, e: offered.append(1) or real_offer(self, e))
    assert dp.resync().total == 0 and offered == []  # neighbour and FDB dumps: the same
    k.state["neigh"].pop(next(iter(k.state["neigh"])))  # an FDB entry or a neighbour, silently
    assert dp.resync().total == 1 and offered and not dp.drift()


def test_the_set_of_peer_ips_changes_only_when_an_ip_comes_or_goes():
    """The allow-list asks for it after every batch of events: it is kept, not rebuilt."""
    dp = plane()
    shared = ipa.ip_address("198.51.100.50")
    dp.set_peers([peer(2, ip=shared), peer(3, ip=shared)])
    a = dp.admission
    assert a.ips == {shared: 2}
    before = a.ips_generation
    dp.remove_peer("p2")  # p3 still sends from there
    assert a.ips == {shared: 1} and a.ips_generation == before
    dp.add_peer(peer(2, ip=shared))
    assert a.ips_generation == before
    dp.set_peers([peer(4)])
    assert set(a.ips) == {ipa.ip_address("198.51.100.4")} and a.ips_generation == before + 2
