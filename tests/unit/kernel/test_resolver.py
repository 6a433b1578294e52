"""On-demand neighbours over a fake kernel: misses answered from memory, classified by their
attributes, rate-limited; entries follow their peers; a restart writes nothing."""

import ipaddress as ipa

from tests.unit.kernel.fakekernel import FakeKernel
from tests.unit.kernel.test_dataplane import peer, plane
from vxnet.kernel import netlink as nl
from vxnet.kernel.resolver import TokenBucket

IFINDEX = 7


def l3_miss(addr: str) -> bytes:
    return nl.neigh_del_body(nl.AF_INET, IFINDEX, ipa.ip_address(addr).packed)


def l2_miss(mac: bytes) -> bytes:
    return nl._NDMSG.pack(nl.AF_BRIDGE, IFINDEX, nl.NUD_STALE, 0, 0) + nl.attr(nl.NDA_LLADDR, mac)


def miss(dp, body: bytes) -> bool:
    return dp.on_message(nl.RTM_GETNEIGH, body, 0, len(body))


def neighbours(k: FakeKernel) -> dict[str, tuple[str, int]]:
    out = {}
    for body in k.state["neigh"].values():
        fam, _, state, _, dst, ll = nl.parse_neigh(body, 0, len(body))
        if fam == nl.AF_INET:
            out[str(ipa.ip_address(dst))] = (ll.hex(":"), state)
    return out


def fdb(k: FakeKernel) -> dict[str, tuple[str, int]]:
    out = {}
    for body in k.state["neigh"].values():
        fam, _, state, _, dst, ll = nl.parse_neigh(body, 0, len(body))
        if fam == nl.AF_BRIDGE:
            out[ll.hex(":")] = (str(ipa.ip_address(dst)), state)
    return out


def on_demand(k, fdb_too=False, peers=(2, 3)):
    dp = plane(k, neigh_on_demand=True, fdb_on_demand=fdb_too)
    dp.set_peers([peer(i) for i in peers])
    dp.resync()
    return dp


def test_one_route_for_the_network_and_no_per_peer_neighbours():
    k = FakeKernel()
    on_demand(k)
    [route] = k.state["route"].values()
    _, _, dst, dst_len, _, _, oif, gateway, _ = nl.parse_route(route, 0, len(route))
    assert (ipa.ip_address(dst), dst_len, oif, gateway) == \
        (ipa.ip_address("10.244.0.0"), 16, IFINDEX, b"")
    assert neighbours(k) == {} and set(fdb(k)) == {peer(2).vtep_mac, peer(3).vtep_mac}


def test_an_l3_miss_is_answered_with_the_owners_mac_as_a_reachable_entry():
    k = FakeKernel()
    dp = on_demand(k)
    assert miss(dp, l3_miss("10.244.3.7"))
    dp.apply()
    assert neighbours(k) == {"10.244.3.7": (peer(3).vtep_mac, nl.NUD_REACHABLE)}
    assert dp.resolver.misses["l3 answered"] == 1


def test_misses_no_node_owns_are_ignored_and_counted():
    k = FakeKernel()
    dp = on_demand(k)
    assert not miss(dp, l3_miss("10.244.99.1"))
    assert not miss(dp, l2_miss(bytes.fromhex("0e0000000099")))  # no L2 answers asked for
    assert dp.apply().total == 0
    assert dp.resolver.misses["l3 unknown"] == 1 and dp.resolver.last_unknown == "10.244.99.1"


def test_with_fdb_on_demand_the_l3_answer_brings_its_fdb_entry_and_l2_misses_are_answered():
    k = FakeKernel()
    dp = on_demand(k, fdb_too=True)
    assert fdb(k) == {}
    miss(dp, l3_miss("10.244.2.5"))
    dp.apply()
    assert fdb(k) == {peer(2).vtep_mac: ("198.51.100.2", nl.NUD_REACHABLE)}
    assert miss(dp, l2_miss(peer(3).mac))
    dp.apply()
    assert fdb(k)[peer(3).vtep_mac] == ("198.51.100.3", nl.NUD_REACHABLE)


def test_a_burst_is_rate_limited_and_what_is_left_over_is_asked_again():
    k = FakeKernel()
    dp = on_demand(k)
    now = [0.0]
    dp.resolver.limiter = TokenBucket(100, 10, clock=lambda: now[0])
    answered = sum(miss(dp, l3_miss(f"10.244.2.{i}")) for i in range(2, 50))
    assert answered == 10 and dp.resolver.misses["l3 limited"] == 38
    now[0] += 1.0  # the kernel asks again a second later (app_solicit probes)
    assert miss(dp, l3_miss("10.244.2.40"))
    dp.apply()
    assert len(neighbours(k)) == 11


def test_a_peer_that_goes_takes_its_entries_and_a_new_mac_rewrites_them():
    k = FakeKernel()
    dp = on_demand(k)
    for addr in ("10.244.2.5", "10.244.2.6", "10.244.3.5"):
        miss(dp, l3_miss(addr))
    dp.apply()
    moved = peer(3)
    moved = type(moved).of(moved.key, moved.subnet, moved.public_ip, "0e:00:00:00:03:33")
    dp.set_peers([peer(2), moved])
    dp.apply()
    assert neighbours(k)["10.244.3.5"] == ("0e:00:00:00:03:33", nl.NUD_REACHABLE)
    dp.set_peers([moved])
    dp.apply()
    assert set(neighbours(k)) == {"10.244.3.5"}


def test_an_entry_the_kernel_ages_out_is_forgotten_not_put_back():
    k = FakeKernel()
    dp = on_demand(k)
    miss(dp, l3_miss("10.244.2.5"))
    dp.apply()
    key = next(kk for kk in k.state["neigh"] if kk[0] == nl.AF_INET)
    body = k.state["neigh"].pop(key)
    assert dp.on_message(nl.RTM_DELNEIGH, body, 0, len(body))
    assert dp.apply().total == 0 and neighbours(k) == {}
    assert dp.resync().total == 0


def test_a_restart_adopts_what_the_kernel_holds_and_fixes_only_what_is_wrong():
    k = FakeKernel()
    dp = on_demand(k)
    for addr in ("10.244.2.5", "10.244.3.5"):
        miss(dp, l3_miss(addr))
    dp.apply()
    again = plane(k, neigh_on_demand=True)
    again.set_peers([peer(2), peer(3)])
    assert again.resync().total == 0
    third = plane(k, neigh_on_demand=True)  # restarted after peer 3 left
    third.set_peers([peer(2)])
    third.resync()
    assert set(neighbours(k)) == {"10.244.2.5"}
