"""A small rtnetlink codec for the bulk path: routes, neighbours, FDB, nexthops.

pyroute2 decodes every attribute of every message (~270 us a request here); this packs many
requests into one send, checks every ACK and maps a failure back to the entry that caused it,
and parses only the fields the reconciler compares. Entries are plain tuples of bytes/ints so
that a dump of 20k entries and its diff cost milliseconds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple, overload

from vxnet.errors import VxnetError

# --- constants (linux/netlink.h, rtnetlink.h, neighbour.h, nexthop.h) ----------
NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE = 2, 3, 0x10  # below MIN_TYPE: control messages
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x300, 0x100, 0x400
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 1, 10, 11, 12
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106

AF_INET, AF_INET6, AF_BRIDGE = socket.AF_INET, socket.AF_INET6, 7
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE, RTA_NH_ID = 1, 4, 5, 15, 30
RT_TABLE_MAIN, RTN_UNICAST, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTNH_F_ONLINK = 254, 1, 0, 253, 4
RTPROT_KERNEL, RTPROT_BOOT = 2, 3
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_FAILED = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NUD_PERMANENT, NTF_SELF = 0x80, 0x02
NHA_ID, NHA_OIF, NHA_GATEWAY = 1, 5, 6
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000

RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE, RTNLGRP_NEXTHOP = \
    1, 3, 7, 11, 32

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_TYPE_FLAGS = struct.Struct("=HH")
RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_NHMSG = struct.Struct("=BBBBI")  # family scope protocol resvd flags
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_ATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")

CHUNK = 64 * 1024  # bytes of requests per sendmsg; their ACKs fit the receive buffer easily


class NetlinkError(VxnetError):
    """A kernel request failed. `entry` is what the caller attached to the request."""

    def __init__(self, code: int, entry: object = None, detail: str = "") -> None:
        text = f"{os.strerror(code)}{': ' + detail if detail else ''}"
        super().__init__(f"{entry}: {text}" if entry is not None else text)
        self.errno, self.entry, self.detail = code, entry, detail


def attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _ATTR.pack(n, kind) + data + b"\0" * (-n & 3)


def parse_attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        n, kind = _ATTR.unpack_from(buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + n]  # strip NLA_F_NESTED / NET_BYTEORDER
        off += (n + 3) & ~3
    return out


# --- entries ----------
# Keys and values are what the reconciler diffs; addresses are packed bytes (4 or 16), MACs 6.

class RouteKey(NamedTuple):
    family: int
    dst: bytes
    dst_len: int


class Route(NamedTuple):
    """A route's value. Via a nexthop object (nhid) or via a gateway on oif."""

    protocol: int
    nhid: int = 0
    oif: int = 0
    gateway: bytes = b""
    onlink: bool = False


class Nexthop(NamedTuple):
    family: int
    oif: int
    gateway: bytes
    onlink: bool
    protocol: int


class NeighKey(NamedTuple):
    family: int
    ifindex: int
    dst: bytes


class FdbKey(NamedTuple):
    ifindex: int
    mac: bytes


# --- request encoders ----------
# The per-peer messages (route via a nexthop, nexthop, neighbour, FDB entry) are packed by one
# precompiled struct each, per address length: a 20 000-peer pass builds 80 000 of them, and
# attribute-by-attribute concatenation was a third of its time. The generic forms cover the rest.

def _layouts(fmt: str) -> dict[int, struct.Struct]:
    """`fmt` with {a} standing for an address: a struct per address length (IPv4, IPv6)."""
    return {n: struct.Struct("=" + fmt.format(a=f"{n}s")) for n in (4, 16)}


_ROUTE_NH = _layouts("BBBBBBBBI HHI HH{a} HHI")  # rtmsg, RTA_TABLE, RTA_DST, RTA_NH_ID
_NEXTHOP = _layouts("BBBBI HHI HHI HH{a}")  # nhmsg, NHA_ID, NHA_OIF, NHA_GATEWAY
_NEIGH = _layouts("BxxxiHBB HH{a} HH6sxx")  # ndmsg, NDA_DST, NDA_LLADDR
_FDB = _layouts("BxxxiHBB HH6sxx HH{a}")  # ndmsg, NDA_LLADDR, NDA_DST


def _route_body(key: RouteKey, table: int, r: Route) -> bytes:
    # a route out of a device with no gateway reaches its destinations directly (on-demand
    # neighbours: the whole pod network through the VXLAN device), as `ip route` makes it
    scope = RT_SCOPE_LINK if r.oif and not (r.gateway or r.nhid) else RT_SCOPE_UNIVERSE
    flags = RTNH_F_ONLINK if r.onlink else 0
    body = RTMSG.pack(key.family, key.dst_len, 0, 0, table if table < 256 else 252, r.protocol,
                       scope, RTN_UNICAST, flags)
    body += attr(RTA_TABLE, U32.pack(table)) + attr(RTA_DST, key.dst)
    if r.nhid:
        return body + attr(RTA_NH_ID, U32.pack(r.nhid))
    if r.oif:
        body += attr(RTA_OIF, U32.pack(r.oif))
    return body + (attr(RTA_GATEWAY, r.gateway) if r.gateway else b"")


def route_set(key: RouteKey, r: Route, table: int = RT_TABLE_MAIN) -> tuple[int, int, bytes]:
    if r.nhid and table < 256 and len(key.dst) in _ROUTE_NH:
        n = len(key.dst)
        return RTM_NEWROUTE, NLM_F_REPLACE | NLM_F_CREATE, _ROUTE_NH[n].pack(
            key.family, key.dst_len, 0, 0, table, r.protocol, RT_SCOPE_UNIVERSE, RTN_UNICAST,
            RTNH_F_ONLINK if r.onlink else 0, 8, RTA_TABLE, table, 4 + n, RTA_DST, key.dst,
            8, RTA_NH_ID, r.nhid)
    return RTM_NEWROUTE, NLM_F_REPLACE | NLM_F_CREATE, _route_body(key, table, r)


def route_del(key: RouteKey, r: Route, table: int = RT_TABLE_MAIN) -> tuple[int, int, bytes]:
    return RTM_DELROUTE, 0, _route_body(key, table, r)


def neigh_set(key: NeighKey, mac: bytes, state: int = NUD_PERMANENT) -> tuple[int, int, bytes]:
    n = len(key.dst)
    if n in _NEIGH and len(mac) == 6:
        return RTM_NEWNEIGH, NLM_F_REPLACE | NLM_F_CREATE, _NEIGH[n].pack(
            key.family, key.ifindex, state, 0, 0, 4 + n, NDA_DST, key.dst, 10, NDA_LLADDR, mac)
    body = _NDMSG.pack(key.family, key.ifindex, state, 0, 0)
    return RTM_NEWNEIGH, NLM_F_REPLACE | NLM_F_CREATE, \
        body + attr(NDA_DST, key.dst) + attr(NDA_LLADDR, mac)


def neigh_del(key: NeighKey, mac: bytes) -> tuple[int, int, bytes]:
    return RTM_DELNEIGH, 0, _NDMSG.pack(key.family, key.ifindex, 0, 0, 0) + attr(NDA_DST, key.dst)


def fdb_set(key: FdbKey, dst: bytes, state: int = NUD_PERMANENT) -> tuple[int, int, bytes]:
    # NTF_SELF: the vxlan device's own table (no bridge master); PERMANENT: never aged out.
    n = len(dst)
    if n in _FDB and len(key.mac) == 6:
        return RTM_NEWNEIGH, NLM_F_REPLACE | NLM_F_CREATE, _FDB[n].pack(
            AF_BRIDGE, key.ifindex, state, NTF_SELF, 0, 10, NDA_LLADDR, key.mac, 4 + n, NDA_DST,
            dst)
    body = _NDMSG.pack(AF_BRIDGE, key.ifindex, state, NTF_SELF, 0)
    return RTM_NEWNEIGH, NLM_F_REPLACE | NLM_F_CREATE, \
        body + attr(NDA_LLADDR, key.mac) + attr(NDA_DST, dst)


def fdb_del(key: FdbKey, dst: bytes) -> tuple[int, int, bytes]:
    body = _NDMSG.pack(AF_BRIDGE, key.ifindex, NUD_PERMANENT, NTF_SELF, 0)
    return RTM_DELNEIGH, 0, body + attr(NDA_LLADDR, key.mac) + attr(NDA_DST, dst)


def nexthop_set(nhid: int, nh: Nexthop) -> tuple[int, int, bytes]:
    n = len(nh.gateway)
    if n in _NEXTHOP:
        return RTM_NEWNEXTHOP, NLM_F_REPLACE | NLM_F_CREATE, _NEXTHOP[n].pack(
            nh.family, RT_SCOPE_UNIVERSE, nh.protocol, 0, RTNH_F_ONLINK if nh.onlink else 0,
            8, NHA_ID, nhid, 8, NHA_OIF, nh.oif, 4 + n, NHA_GATEWAY, nh.gateway)
    body = _NHMSG.pack(nh.family, RT_SCOPE_UNIVERSE, nh.protocol, 0,
                       RTNH_F_ONLINK if nh.onlink else 0)
    body += attr(NHA_ID, U32.pack(nhid)) + attr(NHA_OIF, U32.pack(nh.oif)) + \
        attr(NHA_GATEWAY, nh.gateway)
    return RTM_NEWNEXTHOP, NLM_F_REPLACE | NLM_F_CREATE, body


def nexthop_del(nhid: int, nh: Nexthop) -> tuple[int, int, bytes]:
    return RTM_DELNEXTHOP, 0, _NHMSG.pack(nh.family, 0, 0, 0, 0) + attr(NHA_ID, U32.pack(nhid))


# --- message parsers (dumps and notifications share them) ----------
# Tight loops over just the attributes we compare: what keeps a 20k-entry dump cheap.

_ZERO = {AF_INET: bytes(4), AF_INET6: bytes(16)}
_attr_at = _ATTR.unpack_from
_u32_at = U32.unpack_from


def parse_route(buf: bytes, off: int, end: int) -> tuple[int, RouteKey, Route] | None:
    """(table, key, value) of a unicast route, or None for anything else."""
    fam, dlen, _, _, table, proto, _, rtype, flags = RTMSG.unpack_from(buf, off)
    if rtype != RTN_UNICAST:
        return None
    dst = gw = b""
    nhid = oif = 0
    a = off + 12
    while a + 4 <= end:
        n, kind = _attr_at(buf, a)
        if n < 4:
            break
        if kind == RTA_TABLE:
            table = _u32_at(buf, a + 4)[0]
        elif kind == RTA_DST:
            dst = buf[a + 4:a + n]
        elif kind == RTA_NH_ID:
            nhid = _u32_at(buf, a + 4)[0]
            break  # the kernel puts table and dst first; what follows repeats the nexthop
        elif kind == RTA_OIF:
            oif = _u32_at(buf, a + 4)[0]
        elif kind == RTA_GATEWAY:
            gw = buf[a + 4:a + n]
        a += (n + 3) & ~3
    key = RouteKey(fam, dst or _ZERO.get(fam, b""), dlen)
    if nhid:  # the nexthop object holds oif/gateway; the kernel repeats them for old tools
        return table, key, Route(proto, nhid)
    return table, key, Route(proto, 0, oif, gw, bool(flags & RTNH_F_ONLINK))


def parse_neigh(buf: bytes, off: int, end: int
                ) -> tuple[int, int, int, int, bytes | None, bytes | None]:
    """(family, ifindex, state, flags, dst, lladdr) of a neighbour or FDB message."""
    fam, ifindex, state, flags, _ = _NDMSG.unpack_from(buf, off)
    dst = ll = None
    a = off + 12
    while a + 4 <= end:
        n, kind = _attr_at(buf, a)
        if n < 4:
            break
        if kind == NDA_DST:
            dst = buf[a + 4:a + n]
            if ll is not None:
                break
        elif kind == NDA_LLADDR:
            ll = buf[a + 4:a + n]
            if dst is not None:
                break
        a += (n + 3) & ~3
    return fam, ifindex, state, flags, dst, ll


def parse_nexthop(buf: bytes, off: int, end: int) -> tuple[int, Nexthop] | None:
    """(id, value) of a gateway nexthop; None for groups, blackholes and FDB nexthops."""
    fam, _, proto, _, flags = _NHMSG.unpack_from(buf, off)
    nhid = oif = 0
    gw = b""
    a = off + 8
    while a + 4 <= end:
        n, kind = _attr_at(buf, a)
        if n < 4:
            break
        if kind == NHA_ID:
            nhid = _u32_at(buf, a + 4)[0]
        elif kind == NHA_OIF:
            oif = _u32_at(buf, a + 4)[0]
        elif kind == NHA_GATEWAY:
            gw = buf[a + 4:a + n]
        a += (n + 3) & ~3
    if not nhid or not gw:
        return None
    return nhid, Nexthop(fam, oif, gw, bool(flags & RTNH_F_ONLINK), proto)


def parse_link(buf: bytes, off: int, end: int) -> tuple[int, int]:
    _, _, index, flags, _ = IFINFO.unpack_from(buf, off)
    return index, flags


# --- the socket ----------

Request = tuple[int, int, bytes]  # (message type, flags, body): what the encoders above make
Reply = tuple[bytes, int, int]  # (buffer, payload offset, payload end) of one message
Event = tuple[int, bytes, int, int]  # (message type, buffer, payload offset, payload end)
# the message that ends an exchange: (type, flags, buffer, payload offset, payload end)
_Last = tuple[int, int, bytes, int, int]

_NOTIFICATIONS = -1  # a "sequence number" no request has (theirs are u32): nothing is a reply
_NOBODY = -1  # a port no socket has: no notification is left out


@dataclass(slots=True)
class Failure:
    entry: object
    error: NetlinkError


class RtnlSocket:
    """A blocking NETLINK_ROUTE socket for batched requests and dumps (or, with groups, a
    non-blocking event socket; `protocol` picks another netlink family for those, such as
    NETLINK_NETFILTER). Create it inside the target netns."""

    def __init__(self, groups: Iterable[int] = (), rcvbuf: int = 8 << 20,
                 timeout: float = 10.0, protocol: int = socket.NETLINK_ROUTE) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  protocol)
        # a kernel that never answers must not hang the agent: recv raises TimeoutError (an
        # OSError) and the pass is retried. Event sockets are non-blocking (read when ready).
        groups = tuple(groups)
        self.sock.settimeout(0 if groups else timeout)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
            self.sock.setsockopt(socket.SOL_SOCKET, 32, 1 << 20)  # SO_SNDBUFFORCE
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # ACKs don't echo the request
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # errors say why
        self.sock.bind((0, 0))
        for g in groups:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
        self._seq = 0
        self.requests = 0  # kernel writes sent, for metrics and tests

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        """One request; its sequence number."""
        seq = self._next_seq()
        self.sock.send(_HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST, seq, 0)
                       + body)
        return seq

    # Reading to the end of a request returns its last message; once=True reads one datagram
    # and returns None: the overloads say so, so callers need no "is not None" check.
    @overload
    def _receive(self, seq: int, replies: list[Reply],
                 errors: list[tuple[int, bytes, int, int]] | None = ...,
                 events: list[Event] | None = ..., skip_portid: int = ...,
                 once: Literal[False] = ...) -> _Last: ...

    @overload
    def _receive(self, seq: int, replies: list[Reply],
                 errors: list[tuple[int, bytes, int, int]] | None = ...,
                 events: list[Event] | None = ..., skip_portid: int = ..., *,
                 once: Literal[True]) -> None: ...

    def _receive(self, seq: int, replies: list[Reply],
                 errors: list[tuple[int, bytes, int, int]] | None = None,
                 events: list[Event] | None = None, skip_portid: int = _NOBODY,
                 once: bool = False) -> _Last | None:
        """The one receive loop and header walk of every exchange with the kernel.

        Reads until the message that ends request `seq` -- its ACK or error, or a dump's
        NLMSG_DONE -- and returns it as (type, flags, buffer, payload offset, payload end).
        On the way, the payloads of the other replies to `seq` go to `replies`; errors
        answering other requests (a batch's earlier ones) to `errors` as (seq, buffer, payload
        offset, payload end); everything else, unless it carries `skip_portid`, to `events`.
        `once`: read one datagram only, without blocking (BlockingIOError when none is queued),
        and return None.

        The walk is inline, not a generator per message: it is the whole Python cost of a
        20 000-entry dump beyond the parsers.
        """
        recv, hdr_at = self.sock.recv, _HDR.unpack_from
        error, done, control = NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE
        add = replies.append
        while True:
            data = recv(1 << 20, socket.MSG_DONTWAIT) if once else recv(1 << 20)
            off, size = 0, len(data)
            while off + 16 <= size:
                n, t, flags, s, pid = hdr_at(data, off)
                if n < 16:
                    break
                if s == seq:
                    if t < control and t in (error, done):
                        return t, flags, data, off + 16, off + n
                    add((data, off + 16, off + n))
                elif t == error and errors is not None:
                    errors.append((s, data, off + 16, off + n))
                elif events is not None and pid != skip_portid:
                    events.append((t, data, off + 16, off + n))
                off += (n + 3) & ~3
            if once:
                return None

    def batch(self, requests: Iterable[tuple[object, Request]]) -> list[Failure]:
        """Send (entry, (type, flags, body)) requests, many per send. Returns the failures, each
        mapped back to its entry; the kernel goes on past a failed request.

        The kernel handles a whole send before the call returns and always reports an error, so
        only each chunk's last request asks for an ACK: every error queued before that ACK is
        one of the chunk's, and no error means success. One receive per chunk, not per entry.
        """
        failures: list[Failure] = []
        pending: dict[int, object] = {}
        buf = bytearray()
        pack, seq = _HDR.pack, self._seq
        for entry, (mtype, flags, body) in requests:
            seq = (seq + 1) & 0xFFFFFFFF or 1
            pending[seq] = entry
            at = len(buf)
            buf += pack(16 + len(body), mtype, flags | NLM_F_REQUEST, seq, 0)
            buf += body
            if len(buf) >= CHUNK:
                self._flush(buf, at, seq, pending, failures)
                buf, pending = bytearray(), {}
        if buf:
            self._flush(buf, at, seq, pending, failures)
        self._seq = seq
        return failures

    def _flush(self, buf: bytearray, last_at: int, last_seq: int, pending: dict[int, object],
               failures: list[Failure]) -> None:
        mtype, flags = _TYPE_FLAGS.unpack_from(buf, last_at + 4)
        _TYPE_FLAGS.pack_into(buf, last_at + 4, mtype, flags | NLM_F_ACK)
        self.sock.send(buf)
        self.requests += len(pending)
        errors: list[tuple[int, bytes, int, int]] = []
        ack = self._receive(last_seq, [], errors)
        _, _, data, off, end = ack
        errors.append((last_seq, data, off, end))
        for seq, data, off, end in errors:
            code = -_ERR.unpack_from(data, off)[0]
            if code and seq in pending:
                entry = pending[seq]
                failures.append(Failure(entry, NetlinkError(code, entry,
                                                            _ext_ack(data, off, end))))

    def request(self, mtype: int, flags: int, body: bytes, entry: object = None
                ) -> list[Reply]:
        """One request, acknowledged: (buffer, payload offset, payload end) of its replies
        (a get's answer; nothing for a write). A refusal raises NetlinkError naming `entry`."""
        seq = self._send(mtype, flags | NLM_F_ACK, body)
        self.requests += 1
        out: list[Reply] = []
        ack = self._receive(seq, out)
        t, _, data, off, end = ack
        code = -_ERR.unpack_from(data, off)[0] if t == NLMSG_ERROR else 0
        if code:
            raise NetlinkError(code, entry, _ext_ack(data, off, end))
        return out

    def dump(self, mtype: int, body: bytes) -> list[Reply]:
        """(buffer, payload offset, payload end) of every message of a dump. Restarts the dump
        if the kernel says a concurrent change interrupted it (flagged on NLMSG_DONE)."""
        for _ in range(5):
            out: list[Reply] = []
            last = self._receive(self._send(mtype, NLM_F_DUMP, body), out)
            t, flags, data, off, end = last
            if t == NLMSG_ERROR:
                raise NetlinkError(-_ERR.unpack_from(data, off)[0], f"dump {mtype}",
                                   _ext_ack(data, off, end))
            if not flags & NLM_F_DUMP_INTR:
                return out
        raise NetlinkError(errno.EINTR, f"dump {mtype}", "interrupted five times")

    @property
    def portid(self) -> int:
        """The socket's netlink port: what the kernel's notifications of its requests carry."""
        return int(self.sock.getsockname()[0])

    def recv_events(self, datagrams: int = 1000, skip_portid: int = 0) -> Iterator[Event]:
        """Queued notifications, without blocking, at most `datagrams` reads' worth (the rest
        stays queued for the next call, so a flood of them never holds the event loop long).
        Those carrying `skip_portid` (the echo of that socket's own requests) are left out.
        ENOBUFS (events lost) propagates."""
        events: list[Event] = []
        skip = skip_portid or _NOBODY
        for _ in range(datagrams):
            try:
                self._receive(_NOTIFICATIONS, [], events=events, skip_portid=skip, once=True)
            except BlockingIOError:
                return
            yield from events
            events.clear()


def _ext_ack(data: bytes, off: int, end: int) -> str:
    # With NETLINK_CAP_ACK the error carries only the original header, then extack attributes.
    attrs_at = off + 4 + _HDR.size
    msg = parse_attrs(data, attrs_at, end).get(NLMSGERR_ATTR_MSG, b"")
    return msg.rstrip(b"\0").decode(errors="replace")


# --- dump requests ----------

def route_dump_request(family: int) -> bytes:
    return RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


def neigh_dump_request(family: int, ifindex: int = 0) -> bytes:
    """Entries of one device only, filtered by the kernel (else every pod's neighbour and every
    bridge port's FDB entry on the host would be read, and thrown away, on each resync).
    Neighbour dumps take the device as NDA_IFINDEX; FDB dumps as the index of an ifinfomsg
    header (what `bridge fdb show dev` sends; an ndmsg header is not filtered at all)."""
    if not ifindex:
        return _NDMSG.pack(family, 0, 0, 0, 0)
    if family == AF_BRIDGE:
        return IFINFO.pack(AF_BRIDGE, 0, ifindex, 0, 0)
    return _NDMSG.pack(family, 0, 0, 0, 0) + attr(NDA_IFINDEX, U32.pack(ifindex))


def nexthop_dump_request(family: int = 0) -> bytes:
    return _NHMSG.pack(family, 0, 0, 0, 0)
