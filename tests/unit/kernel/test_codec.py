"""Encoders and parsers of the lean codec agree with each other, and the precompiled bulk
bodies are byte-identical to an attribute-by-attribute encoding of the same entry (the kernel's
own view of them: tests/integration/kernel/test_netlink.py)."""

import ipaddress as ipa
import socket

import pytest

from vxnet.kernel import netlink as nl

GW = ipa.ip_address("10.244.2.0").packed
GW6 = ipa.ip_address("fd00:10:244:2::").packed
MAC = bytes.fromhex("0e180af40700")
a = nl.attr


# -- the reference: one attribute at a time, as iproute2 builds them ----------

def generic_route(fam: int, dst: bytes, dlen: int, proto: int, *, nhid: int = 0, oif: int = 0,
                  gateway: bytes = b"", onlink: bool = False) -> bytes:
    scope = nl.RT_SCOPE_LINK if oif and not (gateway or nhid) else nl.RT_SCOPE_UNIVERSE
    body = nl.RTMSG.pack(fam, dlen, 0, 0, 254, proto, scope, nl.RTN_UNICAST,
                         nl.RTNH_F_ONLINK if onlink else 0)
    body += a(nl.RTA_TABLE, nl.U32.pack(254)) + a(nl.RTA_DST, dst)
    if nhid:
        return body + a(nl.RTA_NH_ID, nl.U32.pack(nhid))
    if oif:
        body += a(nl.RTA_OIF, nl.U32.pack(oif))
    return body + (a(nl.RTA_GATEWAY, gateway) if gateway else b"")


def generic_neigh(fam: int, ifindex: int, dst: bytes, mac: bytes, state: int) -> bytes:
    return nl._NDMSG.pack(fam, ifindex, state, 0, 0) + a(nl.NDA_DST, dst) + a(nl.NDA_LLADDR, mac)


def generic_fdb(ifindex: int, mac: bytes, dst: bytes, state: int) -> bytes:
    return nl._NDMSG.pack(nl.AF_BRIDGE, ifindex, state, nl.NTF_SELF, 0) + \
        a(nl.NDA_LLADDR, mac) + a(nl.NDA_DST, dst)


def generic_nexthop(nhid: int, fam: int, oif: int, gw: bytes, proto: int) -> bytes:
    return nl._NHMSG.pack(fam, 0, proto, 0, nl.RTNH_F_ONLINK) + a(nl.NHA_ID, nl.U32.pack(nhid)) \
        + a(nl.NHA_OIF, nl.U32.pack(oif)) + a(nl.NHA_GATEWAY, gw)


@pytest.mark.parametrize("dst", [bytes([10, 244, 7, 0]), ipa.ip_address("fd00::7").packed])
def test_bulk_bodies_are_byte_identical_to_attribute_by_attribute_encoding(dst):
    fam = nl.AF_INET if len(dst) == 4 else nl.AF_INET6
    key = nl.route_key(dst, 24)
    assert nl.route_body(fam, key, nl.route_value(118, nhid=0x76780001)) == \
        generic_route(fam, dst, 24, 118, nhid=0x76780001)
    assert nl.route_body(fam, key, nl.route_value(118, oif=7, gateway=dst, onlink=True)) == \
        generic_route(fam, dst, 24, 118, oif=7, gateway=dst, onlink=True)
    assert nl.route_body(fam, key, nl.route_value(118, oif=7)) == \
        generic_route(fam, dst, 24, 118, oif=7)
    assert nl.nexthop_body(5, fam, 7, dst, 118) == generic_nexthop(5, fam, 7, dst, 118)
    for state in (nl.NUD_PERMANENT, nl.NUD_REACHABLE):
        assert nl.neigh_body(fam, 7, dst, MAC, state) == generic_neigh(fam, 7, dst, MAC, state)
        assert nl.fdb_body(7, MAC, dst, state) == generic_fdb(7, MAC, dst, state)
    assert nl.neigh_del_body(fam, 7, dst) == nl._NDMSG.pack(fam, 7, 0, 0, 0) + a(nl.NDA_DST, dst)
    assert nl.nexthop_del_body(5, fam) == nl._NHMSG.pack(fam, 0, 0, 0, 0) + \
        a(nl.NHA_ID, nl.U32.pack(5))


def test_route_round_trip():
    for fam, dst, dlen, value in [
        (socket.AF_INET, GW, 24, nl.route_value(118, nhid=77)),
        (socket.AF_INET, GW, 24, nl.route_value(118, oif=5, gateway=GW, onlink=True)),
        (socket.AF_INET6, GW6, 64, nl.route_value(3, oif=9, gateway=GW6)),
    ]:
        b = nl.route_body(fam, nl.route_key(dst, dlen), value)
        table, f, d, n, proto, nhid, oif, gw, onlink = nl.parse_route(b, 0, len(b))
        assert (table, f, d, n) == (254, fam, dst, dlen)
        assert nl.route_value(proto, nhid=nhid, oif=oif, gateway=gw, onlink=onlink) == value
        assert nl.route_fields(value) == (proto, onlink, nhid, oif, gw)
        assert nl.route_nhid(value) == nhid


def test_nexthop_round_trip():
    b = nl.nexthop_body(1987575808, socket.AF_INET6, 4, GW6, 118)
    assert nl.parse_nexthop(b, 0, len(b)) == (1987575808, socket.AF_INET6, 118, 4, GW6, True)


def test_neigh_and_fdb_bodies():
    b = nl.neigh_body(socket.AF_INET, 4, GW, b"\x0e\0\0\0\0\x02")
    fam, ifindex, state, flags, dst, mac = nl.parse_neigh(b, 0, len(b))
    assert (fam, ifindex, state, dst, mac) == (
        socket.AF_INET, 4, nl.NUD_PERMANENT, GW, b"\x0e\0\0\0\0\x02")
    b = nl.fdb_body(4, b"\x0e\0\0\0\0\x02", ipa.ip_address("198.51.100.2").packed)
    fam, ifindex, state, flags, dst, mac = nl.parse_neigh(b, 0, len(b))
    assert (fam, flags & nl.NTF_SELF, state) == (nl.AF_BRIDGE, nl.NTF_SELF, nl.NUD_PERMANENT)


def test_tables_replace_and_never_create_exclusively():
    from vxnet.kernel.neighbours import FdbTable, NeighTable
    from vxnet.kernel.nexthops import NexthopTable
    from vxnet.kernel.routes import RouteTable
    for table in (RouteTable, NeighTable, FdbTable, NexthopTable):
        assert table.SET[1] == nl.NLM_F_REPLACE | nl.NLM_F_CREATE


def test_attrs_are_padded_and_skipped_cleanly():
    data = nl.attr(1, b"abc") + nl.attr(2, b"defgh")
    assert len(data) % 4 == 0
    assert nl.parse_attrs(data, 0, len(data)) == {1: b"abc", 2: b"defgh"}
    assert nl.parse_attrs(b"\x02\x00\x01\x00", 0, 4) == {}  # a bogus length ends parsing
