"""The lean codec against iproute2's own view of the same namespace."""

import errno
import ipaddress as ipa
import json
import socket

import pytest

from tests.integration.kernel.conftest import open_node, peer_of
from tests.waiting import until
from vxnet.kernel import netlink as nl
from vxnet.kernel.events import EventSocket
from vxnet.kernel.neighbours import NeighTable
from vxnet.kernel.routes import RouteTable

pytestmark = pytest.mark.netns


def ip_json(ns, *args):
    return json.loads(ns.ip("-j", "-N", *args).stdout or "[]")


def addr(b: bytes) -> str:
    return str(ipa.ip_address(b))


def all_routes(sock, family):
    out = set()
    for buf, off, end in sock.dump(nl.RTM_GETROUTE, nl.route_dump_request(family)):
        r = nl.parse_route(buf, off, end)
        if r and r[0] == nl.RT_TABLE_MAIN:
            _, _, d, dlen, proto, nhid, _, gw, _ = r
            dst = "default" if dlen == 0 else (
                addr(d) if dlen == 8 * len(d) else f"{addr(d)}/{dlen}")
            out.add((dst, nhid or None, addr(gw) if gw else None, str(proto)))
    return out


async def test_dumps_agree_with_iproute2(lab):
    n1, n2, n3 = lab.add_node(1), lab.add_node(2), lab.add_node(3)
    k = await open_node(n1, (4, 6))
    k.plane(4).set_peers([peer_of(n2), peer_of(n3)])
    k.plane(6).set_peers([peer_of(n2, 6)])
    k.plane(4).resync()
    k.plane(6).resync()
    ns = n1.ns
    ns.ip("route", "add", "10.77.0.0/16", "via", "198.51.100.254", "proto", "static")
    ns.ip("route", "add", "default", "via", "198.51.100.254")
    ns.ip("neigh", "add", "198.51.100.77", "lladdr", "0e:00:00:00:00:77", "dev", "eth0")

    for fam, flag in ((socket.AF_INET, "-4"), (socket.AF_INET6, "-6")):
        # a route through a nexthop object is its nhid; the gateway is the nexthop's business
        theirs = {(r["dst"], r.get("nhid"), None if "nhid" in r else r.get("gateway"),
                   str(r.get("protocol", 3)))
                  for r in ip_json(ns, flag, "route", "show", "table", "main")
                  if r.get("type", "unicast") == "unicast"}
        assert all_routes(k.sock, fam) == theirs

    every_nh = {}
    for buf, off, end in k.sock.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request()):
        nhid, _, proto, oif, gw, onlink = nl.parse_nexthop(buf, off, end)
        every_nh[nhid] = (addr(gw), oif, onlink, proto)
    theirs_nh = {n["id"]: (n["gateway"], n1.ifindex(n["dev"]), "onlink" in n["flags"],
                           int(n["protocol"])) for n in ip_json(ns, "nexthop")}
    assert every_nh == theirs_nh and len(every_nh) == 3
    for plane in (k.plane(4), k.plane(6)):  # each table's: id -> gateway, as it wants them
        ours_nh = plane.nexthop.dump(k.sock, plane.nhids.range).ours
        assert {i: addr(gw) for i, gw in ours_nh.items()} == \
            {i: gw for i, (gw, oif, _, _) in theirs_nh.items() if oif == plane.spec.ifindex}
        assert ours_nh == dict(plane.nexthop.desired_items()) == \
            dict(plane.nexthop.kernel_items())

    for v, plane in ((4, k.plane(4)), (6, k.plane(6))):
        dev = "flannel.1" if v == 4 else "flannel-v6.1"
        theirs_neigh = {(n["dst"], n["lladdr"]) for n in ip_json(ns, "neigh", "show", "dev", dev)
                        if "PERMANENT" in n["state"]}
        ours = plane.neigh.dump(k.sock)
        assert {(addr(dst), mac.hex(":")) for dst, mac in ours.items()} == theirs_neigh
        assert ours == dict(plane.neigh.desired_items()) == dict(plane.neigh.kernel_items())
        theirs_fdb = {(f["mac"], f["dst"]) for f in json.loads(
            ns.run("bridge", "-j", "fdb", "show", "dev", dev).stdout)
            if f.get("state") == "permanent" and "self" in f["flags"] and "dst" in f}
        ours = plane.fdb.dump(k.sock)
        assert {(mac.hex(":"), addr(dst)) for mac, dst in ours.items()} == theirs_fdb
        assert ours == dict(plane.fdb.desired_items()) == dict(plane.fdb.kernel_items())
        routes = plane.route.dump(k.sock)
        assert routes == dict(plane.route.desired_items()) == dict(plane.route.kernel_items())
        assert {plane.route.show(key) for key in routes} == {
            r["dst"] for r in ip_json(ns, f"-{v}", "route", "show", "proto", "118")}
        assert len(theirs_fdb) == (2 if v == 4 else 1)


async def test_a_failing_request_is_reported_with_its_index(two_nodes):
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    gw = ipa.ip_address("10.244.9.0").packed
    key = nl.route_key(gw, 24)
    routes = [
        nl.route_body(socket.AF_INET, nl.route_key(ipa.ip_address("10.244.8.0").packed, 24),
                      nl.route_value(118, oif=dev, gateway=gw, onlink=True)),  # good
        nl.route_body(socket.AF_INET, key, nl.route_value(118, nhid=424242)),  # no such nexthop
        nl.route_body(socket.AF_INET, key, nl.route_value(118, oif=dev, gateway=gw,
                                                          onlink=True)),  # good
    ]
    failures = k.sock.batch(*RouteTable.SET, routes)
    assert [(f.index, f.errno) for f in failures] == [(1, errno.EINVAL)]
    assert "Nexthop id does not exist" in failures[0].detail
    [gone] = k.sock.batch(*RouteTable.DEL, [routes[2], routes[2]])  # the second finds nothing
    assert gone.index == 1 and gone.errno in (errno.ESRCH, errno.ENOENT)
    # the kernel went on past the failures
    assert "10.244.8.0/24 via 10.244.9.0" in n1.ns.ip("route", "show", "dev", "flannel.1").stdout


async def test_batches_larger_than_one_send(two_nodes):
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    bodies = [nl.neigh_body(socket.AF_INET, dev, ipa.ip_address(
        f"10.250.{i >> 8}.{i & 255}").packed, bytes([14, 0, 0, 0, i >> 8, i & 255]))
              for i in range(3000)]
    assert k.sock.batch(*NeighTable.SET, bodies) == []
    assert len(k.plane().neigh.dump(k.sock)) == 3000
    bodies[2999] = nl.neigh_body(socket.AF_INET, 999, bytes(4), bytes(6))  # no such device
    [failure] = k.sock.batch(*NeighTable.SET, bodies)  # the last of the last chunk
    assert failure.index == 2999 and failure.errno == errno.ENODEV


async def test_dumps_hold_only_our_device_s_entries(two_nodes):
    """The kernel filters neighbour and FDB dumps by device: a host with hundreds of pods'
    neighbours on its bridge does not make every resync read them all."""
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    n1.ns.ip("link", "add", "vxbr0", "type", "bridge")
    n1.ns.ip("link", "set", "vxbr0", "up")
    for i in range(50):
        n1.ns.ip("neigh", "add", f"10.99.0.{i + 1}", "lladdr", f"0e:99:00:00:00:{i:02x}", "dev",
                 "vxbr0", "nud", "permanent")
    n1.ns.ip("neigh", "add", "10.250.0.1", "lladdr", "0e:00:00:00:00:01", "dev", "flannel.1",
             "nud", "permanent")
    n1.ns.run("bridge", "fdb", "append", "0e:00:00:00:00:01", "dev", "flannel.1", "dst",
              "198.51.100.99", "self", "permanent")
    ours = k.sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET, dev))
    assert {nl.parse_neigh(b, o, e)[1] for b, o, e in ours} == {dev}
    fdb = list(k.sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(nl.AF_BRIDGE, dev)))
    assert fdb and {nl.parse_neigh(b, o, e)[1] for b, o, e in fdb} == {dev}
    everything = list(k.sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET)))
    assert len(everything) >= 51


async def test_notifications_of_our_own_writes_can_be_left_out(two_nodes):
    """The kernel names the requesting socket in the notifications of its writes: the monitor
    has the kernel drop the reconciler's echo (a socket filter), and still sees everyone
    else's changes."""
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    with n1.ns.entered():
        events = nl.RtnlSocket((nl.RTNLGRP_NEIGH,))
    events.drop_echoes(k.sock.portid)
    try:
        ours = nl.neigh_body(socket.AF_INET, dev, ipa.ip_address("10.244.9.0").packed,
                             bytes.fromhex("0e0000000009"))
        assert k.sock.batch(*NeighTable.SET, [ours]) == []
        n1.ns.ip("neigh", "add", "10.244.8.0", "lladdr", "0e:00:00:00:00:08", "dev",
                 "flannel.1", "nud", "permanent")
        seen = [addr(nl.parse_neigh(b, o, e)[4]) for t, b, o, e in
                events.recv_events() if t == nl.RTM_NEWNEIGH]
        assert seen == ["10.244.8.0"]
    finally:
        events.close()


async def test_requests_and_dumps_share_one_socket_in_any_order(two_nodes):
    """One receive loop for every exchange: a refused request, a get, a dump and a batch
    one after another on one socket each see their own answers only."""
    n1, _ = two_nodes
    with n1.ns.entered():
        sock = nl.RtnlSocket()
    try:
        eth0 = n1.ifindex("eth0")
        dst = bytes([10, 252, 0, 1])
        delete = nl.neigh_del_body(socket.AF_INET, eth0, dst)  # ndmsg, device and NDA_DST
        with pytest.raises(nl.NetlinkError) as refused:
            sock.request(nl.RTM_DELNEIGH, 0, delete, entry="not there")
        assert refused.value.errno == errno.ENOENT and refused.value.entry == "not there"
        assert sock.request(*NeighTable.SET, nl.neigh_body(
            socket.AF_INET, eth0, dst, bytes.fromhex("0e0000000001"))) == []
        [(buf, off, end)] = sock.request(nl.RTM_GETNEIGH, 0, delete)  # also a get's body
        assert nl.parse_neigh(buf, off, end)[4] == dst
        dumped = sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET, eth0))
        assert dst in {nl.parse_neigh(*m)[4] for m in dumped}
        [failure] = sock.batch(nl.RTM_DELNEIGH, 0, [delete, delete])
        assert failure.index == 1 and failure.errno == errno.ENOENT
        assert sock.requests == 5  # three requests, a batch of two
    finally:
        sock.close()


async def test_an_event_socket_that_overflows_listens_anew_and_says_so(lab):
    """ENOBUFS for real: a tiny receive buffer and a burst of changes nobody reads in time.
    The owner hears of the loss once a new socket listens, and that one hears what follows."""
    n1 = lab.add_node(1)
    eth0 = n1.ifindex("eth0")
    seen: list[str] = []
    lost: list[OSError] = []

    def on_events(events: list[nl.Event]) -> None:
        seen.extend(addr(nl.parse_neigh(b, o, e)[4]) for t, b, o, e in events
                    if t == nl.RTM_NEWNEIGH)

    with n1.ns.entered():
        writer = nl.RtnlSocket()
    try:
        with EventSocket((nl.RTNLGRP_NEIGH,), on_events, lost.append, netns=n1.ns.name,
                         rcvbuf=4096) as events:
            burst = [nl.neigh_body(socket.AF_INET, eth0, bytes([10, 250, i >> 8, i & 255]),
                                   bytes([14, 0, 0, 0, i >> 8, i & 255])) for i in range(2000)]
            assert writer.batch(*NeighTable.SET, burst) == []  # nothing reads yet
            await until(lambda: lost)
            assert [e.errno for e in lost] == [errno.ENOBUFS] and events.overflows == 1
            assert events.is_open and events.error is None
            n1.ns.ip("neigh", "add", "10.251.0.1", "lladdr", "0e:00:00:00:00:01", "dev", "eth0",
                     "nud", "permanent")
            await until(lambda: "10.251.0.1" in seen)
    finally:
        writer.close()



async def test_a_periodic_resync_of_an_unchanged_kernel_parses_no_dump(lab, monkeypatch):
    """Route and nexthop dumps repeat byte for byte, neighbour and FDB dumps but for their
    cache ages: once the caches were loaded from them, a resync only compares digests. A
    neighbour replaced behind our back is still found (its dump differs) and put back."""
    from vxnet.kernel.neighbours import L2Table
    from vxnet.kernel.routes import RouteTable
    n1, n2, n3 = lab.add_node(1), lab.add_node(2), lab.add_node(3)
    k = await open_node(n1)
    plane = k.plane()
    plane.set_peers([peer_of(n2), peer_of(n3)])
    plane.resync()
    plane.resync()  # the first after our writes parses: the caches changed since their dumps
    parsed = []
    for cls, name in ((L2Table, "offer"), (RouteTable, "_file")):
        real = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, x, real=real: parsed.append(1) or real(self, x))
    assert plane.resync().total == 0 and parsed == []
    n1.ns.ip("neigh", "replace", "10.244.2.0", "lladdr", "0e:00:00:00:00:99", "dev", "flannel.1",
             "nud", "permanent")  # the notification is nobody's: no monitor runs here
    assert dict(plane.resync().writes) == {"neigh": 1} and parsed
    assert peer_of(n2).vtep_mac in n1.ns.ip("neigh", "show", "10.244.2.0", "dev",
                                            "flannel.1").stdout


async def test_a_datagram_cut_short_is_an_error_and_the_reads_grow(lab):
    """Reads ask for 64 KiB (a bigger ask is allocated whole on every read); a datagram that
    did not fit is reported, never parsed half, and the next reads are bigger."""
    n1 = lab.add_node(1)
    with n1.ns.entered():
        sock = nl.RtnlSocket()
    try:
        sock._recv_size = 64  # smaller than any dump's first datagram here
        request = nl.route_dump_request(socket.AF_INET)
        with pytest.raises(OSError) as cut:
            sock.dump(nl.RTM_GETROUTE, request)
        assert cut.value.errno == errno.EMSGSIZE and sock._recv_size == 256
        while True:  # each cut read grows the next ones: the dump then comes whole
            try:
                routes = sock.dump(nl.RTM_GETROUTE, request)
                break
            except OSError as e:
                assert e.errno == errno.EMSGSIZE
        assert bytes([198, 51, 100, 0]) in {r[2] for m in routes if (r := nl.parse_route(*m))}
    finally:
        sock.close()


async def test_dumps_of_many_entries_are_digested_by_whole_datagrams(lab):
    """With 1 500 peers each table's dump spans many datagrams of alike messages: they are
    digested without a walk, two dumps of an unchanged kernel agree, and one neighbour changed
    behind our back changes the digest."""
    from vxnet.kernel.mac import vtep_mac
    from vxnet.kernel.peer import Peer
    from vxnet.kernel.table import dump_digest

    n1 = lab.add_node(1)
    k = await open_node(n1)
    plane = k.plane()
    peers = []
    for i in range(1500):
        sub = ipa.ip_network((0x0AF40800 + 16 * i, 28))  # 10.244.8.0/28 on, clear of ours
        peers.append(Peer.of(f"p{i}", sub, ipa.ip_address(f"198.51.100.{100 + i % 150}"),
                             vtep_mac(sub)))
    plane.set_peers(peers)
    assert not plane.resync().failures
    ifindex = plane.spec.ifindex
    dumps = [(nl.RTM_GETROUTE, nl.route_dump_request(socket.AF_INET), False),
             (nl.RTM_GETNEXTHOP, nl.nexthop_dump_request(), False),
             (nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET, ifindex), True),
             (nl.RTM_GETNEIGH, nl.neigh_dump_request(nl.AF_BRIDGE, ifindex), True)]
    for mtype, body, strip in dumps:
        first, again = k.sock.dump(mtype, body), k.sock.dump(mtype, body)
        assert isinstance(first, nl.Dump) and len(first.datagrams) > 1
        assert sum(map(bool, map(nl.uniform, first.datagrams))) >= len(first.datagrams) - 2
        assert len(list(first)) >= 1500
        assert dump_digest(first, strip) == dump_digest(again, strip), mtype
    mtype, body, _ = dumps[2]
    before = dump_digest(k.sock.dump(mtype, body), True)
    n1.ns.ip("neigh", "replace", "10.244.14.0", "lladdr", "0e:00:00:00:00:99", "dev",
             "flannel.1", "nud", "permanent")
    assert dump_digest(k.sock.dump(mtype, body), True) != before
