"""Encoders and parsers of the lean codec agree with each other (and iproute2: integration)."""

import ipaddress as ipa
import socket

import pytest

from vxnet.kernel import netlink as nl

GW = ipa.ip_address("10.244.2.0").packed
GW6 = ipa.ip_address("fd00:10:244:2::").packed


def body(req):
    return req[2]


def test_route_round_trip():
    for key, val in [
        (nl.RouteKey(socket.AF_INET, GW, 24), nl.Route(118, nhid=77)),
        (nl.RouteKey(socket.AF_INET, GW, 24), nl.Route(118, oif=5, gateway=GW, onlink=True)),
        (nl.RouteKey(socket.AF_INET6, GW6, 64), nl.Route(3, oif=9, gateway=GW6)),
    ]:
        b = body(nl.route_set(key, val))
        assert nl.parse_route(b, 0, len(b)) == (254, key, val)


def test_nexthop_round_trip():
    nh = nl.Nexthop(socket.AF_INET6, 4, GW6, True, 118)
    b = body(nl.nexthop_set(1987575808, nh))
    assert nl.parse_nexthop(b, 0, len(b)) == (1987575808, nh)


def test_neigh_and_fdb_bodies():
    b = body(nl.neigh_set(nl.NeighKey(socket.AF_INET, 4, GW), b"\x0e\0\0\0\0\x02"))
    fam, ifindex, state, flags, dst, mac = nl.parse_neigh(b, 0, len(b))
    assert (fam, ifindex, state, dst, mac) == (
        socket.AF_INET, 4, nl.NUD_PERMANENT, GW, b"\x0e\0\0\0\0\x02")
    b = body(nl.fdb_set(nl.FdbKey(4, b"\x0e\0\0\0\0\x02"), ipa.ip_address("198.51.100.2").packed))
    fam, ifindex, state, flags, dst, mac = nl.parse_neigh(b, 0, len(b))
    assert (fam, flags & nl.NTF_SELF, state) == (nl.AF_BRIDGE, nl.NTF_SELF, nl.NUD_PERMANENT)


def test_requests_replace_and_never_exclusive():
    for _, flags, _ in [nl.route_set(nl.RouteKey(2, GW, 24), nl.Route(118, nhid=1)),
                            nl.neigh_set(nl.NeighKey(2, 1, GW), bytes(6)),
                            nl.fdb_set(nl.FdbKey(1, bytes(6)), GW),
                            nl.nexthop_set(1, nl.Nexthop(2, 1, GW, True, 118))]:
        assert flags == nl.NLM_F_REPLACE | nl.NLM_F_CREATE


def test_attrs_are_padded_and_skipped_cleanly():
    data = nl.attr(1, b"abc") + nl.attr(2, b"defgh")
    assert len(data) % 4 == 0
    assert nl.parse_attrs(data, 0, len(data)) == {1: b"abc", 2: b"defgh"}
    assert nl.parse_attrs(b"\x02\x00\x01\x00", 0, 4) == {}  # a bogus length ends parsing


@pytest.mark.parametrize("dst", [bytes([10, 244, 7, 0]), ipa.ip_address("fd00::7").packed])
def test_precompiled_layouts_match_attribute_by_attribute_encoding(dst):
    fam = nl.AF_INET if len(dst) == 4 else nl.AF_INET6
    mac = bytes.fromhex("0e180af40700")
    a = nl.attr
    route = nl.route_set(nl.RouteKey(fam, dst, 24), nl.Route(118, nhid=0x76780001))[2]
    assert route == nl.RTMSG.pack(fam, 24, 0, 0, 254, 118, 0, nl.RTN_UNICAST, 0) + \
        a(nl.RTA_TABLE, nl.U32.pack(254)) + a(nl.RTA_DST, dst) + \
        a(nl.RTA_NH_ID, nl.U32.pack(0x76780001))
    assert route == nl._route_body(nl.RouteKey(fam, dst, 24), 254, nl.Route(118, nhid=0x76780001))
    nh = nl.nexthop_set(5, nl.Nexthop(fam, 7, dst, True, 118))[2]
    assert nh == nl._NHMSG.pack(fam, 0, 118, 0, nl.RTNH_F_ONLINK) + \
        a(nl.NHA_ID, nl.U32.pack(5)) + a(nl.NHA_OIF, nl.U32.pack(7)) + a(nl.NHA_GATEWAY, dst)
    neigh = nl.neigh_set(nl.NeighKey(fam, 7, dst), mac, nl.NUD_REACHABLE)[2]
    assert neigh == nl._NDMSG.pack(fam, 7, nl.NUD_REACHABLE, 0, 0) + a(nl.NDA_DST, dst) + \
        a(nl.NDA_LLADDR, mac)
    fdb = nl.fdb_set(nl.FdbKey(7, mac), dst)[2]
    assert fdb == nl._NDMSG.pack(nl.AF_BRIDGE, 7, nl.NUD_PERMANENT, nl.NTF_SELF, 0) + \
        a(nl.NDA_LLADDR, mac) + a(nl.NDA_DST, dst)
