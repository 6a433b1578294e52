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
            _, k, v = r
            dst = "default" if k.dst_len == 0 else (
                addr(k.dst) if k.dst_len == 8 * len(k.dst) else f"{addr(k.dst)}/{k.dst_len}")
            out.add((dst, v.nhid or None, addr(v.gateway) if v.gateway else None,
                     str(v.protocol)))
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

    ours_nh = {nhid: (addr(v.gateway), v.oif, v.onlink, v.protocol)
               for nhid, v in k.plane(4).nexthop.dump(k.sock).items()}
    ours_nh |= {nhid: (addr(v.gateway), v.oif, v.onlink, v.protocol)
                for nhid, v in k.plane(6).nexthop.dump(k.sock).items()}
    theirs_nh = {n["id"]: (n["gateway"], n1.ifindex(n["dev"]), "onlink" in n["flags"],
                           int(n["protocol"])) for n in ip_json(ns, "nexthop")}
    assert ours_nh == theirs_nh and len(ours_nh) == 3

    for v, plane in ((4, k.plane(4)), (6, k.plane(6))):
        dev = "flannel.1" if v == 4 else "flannel-v6.1"
        theirs_neigh = {(n["dst"], n["lladdr"]) for n in ip_json(ns, "neigh", "show", "dev", dev)
                        if "PERMANENT" in n["state"]}
        ours = plane.neigh.dump(k.sock)
        assert {(addr(key.dst), mac.hex(":")) for key, mac in ours.items()} == theirs_neigh
        theirs_fdb = {(f["mac"], f["dst"]) for f in json.loads(
            ns.run("bridge", "-j", "fdb", "show", "dev", dev).stdout)
            if f.get("state") == "permanent" and "self" in f["flags"] and "dst" in f}
        ours = plane.fdb.dump(k.sock)
        assert {(key.mac.hex(":"), addr(dst)) for key, dst in ours.items()} == theirs_fdb
        assert len(theirs_fdb) == (2 if v == 4 else 1)


async def test_a_failing_request_is_reported_with_its_entry(two_nodes):
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    gw = ipa.ip_address("10.244.9.0").packed
    requests = [
        ("good neigh", nl.neigh_set(nl.NeighKey(socket.AF_INET, dev, gw), bytes.fromhex(
            "0e0000000009"))),
        ("route via a missing nexthop", nl.route_set(nl.RouteKey(socket.AF_INET, gw, 24),
                                                     nl.Route(118, nhid=424242))),
        ("delete of nothing", nl.route_del(nl.RouteKey(socket.AF_INET, gw, 24),
                                           nl.Route(118, oif=dev, gateway=gw, onlink=True))),
        ("good fdb", nl.fdb_set(nl.FdbKey(dev, bytes.fromhex("0e0000000009")),
                                ipa.ip_address("198.51.100.9").packed)),
    ]
    failures = k.sock.batch(requests)
    assert [f.entry for f in failures] == ["route via a missing nexthop", "delete of nothing"]
    assert failures[0].error.errno == 22 and "Nexthop id does not exist" in str(failures[0].error)
    assert failures[0].error.entry == "route via a missing nexthop"
    assert failures[1].error.errno in (3, 2)  # ESRCH
    # the kernel went on past the failures
    assert "0e:00:00:00:00:09" in n1.ns.ip("neigh", "show", "dev", "flannel.1").stdout
    assert "198.51.100.9" in n1.ns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout


async def test_batches_larger_than_one_send(two_nodes):
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    reqs = [(i, nl.neigh_set(nl.NeighKey(socket.AF_INET, dev, ipa.ip_address(
        f"10.250.{i >> 8}.{i & 255}").packed), bytes([14, 0, 0, 0, i >> 8, i & 255])))
            for i in range(3000)]
    assert k.sock.batch(reqs) == []
    assert len(k.plane().neigh.dump(k.sock)) == 3000


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
    fdb = k.sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(nl.AF_BRIDGE, dev))
    assert fdb and {nl.parse_neigh(b, o, e)[1] for b, o, e in fdb} == {dev}
    everything = k.sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET))
    assert len(everything) >= 51


async def test_notifications_of_our_own_writes_can_be_left_out(two_nodes):
    """The kernel names the requesting socket in the notifications of its writes: the monitor
    skips the reconciler's echo, and still sees everyone else's changes."""
    n1, _ = two_nodes
    k = await open_node(n1)
    dev = k.plane().spec.ifindex
    with n1.ns.entered():
        events = nl.RtnlSocket((nl.RTNLGRP_NEIGH,))
    try:
        ours = nl.NeighKey(socket.AF_INET, dev, ipa.ip_address("10.244.9.0").packed)
        assert k.sock.batch([("ours", nl.neigh_set(ours, bytes.fromhex("0e0000000009")))]) == []
        n1.ns.ip("neigh", "add", "10.244.8.0", "lladdr", "0e:00:00:00:00:08", "dev",
                 "flannel.1", "nud", "permanent")
        seen = [addr(nl.parse_neigh(b, o, e)[4]) for t, b, o, e in
                events.recv_events(skip_portid=k.sock.portid) if t == nl.RTM_NEWNEIGH]
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
        key = nl.NeighKey(socket.AF_INET, eth0, bytes([10, 252, 0, 1]))
        with pytest.raises(nl.NetlinkError) as refused:
            sock.request(*nl.neigh_del(key, bytes(6)), entry="not there")
        assert refused.value.errno == errno.ENOENT and refused.value.entry == "not there"
        assert sock.request(*nl.neigh_set(key, bytes.fromhex("0e0000000001"))) == []
        _, _, get = nl.neigh_del(key, b"")  # ndmsg with the device, and NDA_DST: a get's body
        [(buf, off, end)] = sock.request(nl.RTM_GETNEIGH, 0, get)
        assert nl.parse_neigh(buf, off, end)[4] == key.dst
        dumped = sock.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET, eth0))
        assert key.dst in {nl.parse_neigh(*m)[4] for m in dumped}
        [failure] = sock.batch([("again", nl.neigh_del(key, bytes(6))),
                                ("twice", nl.neigh_del(key, bytes(6)))])
        assert failure.entry == "twice" and failure.error.errno == errno.ENOENT
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
            burst = [(i, nl.neigh_set(nl.NeighKey(socket.AF_INET, eth0, bytes(
                [10, 250, i >> 8, i & 255])), bytes([14, 0, 0, 0, i >> 8, i & 255])))
                for i in range(2000)]
            assert writer.batch(burst) == []  # the loop does not turn: nothing is read
            await until(lambda: lost)
            assert [e.errno for e in lost] == [errno.ENOBUFS] and events.overflows == 1
            assert events.is_open and events.error is None
            n1.ns.ip("neigh", "add", "10.251.0.1", "lladdr", "0e:00:00:00:00:01", "dev", "eth0",
                     "nud", "permanent")
            await until(lambda: "10.251.0.1" in seen)
    finally:
        writer.close()

