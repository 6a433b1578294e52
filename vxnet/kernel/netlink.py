"""A small rtnetlink codec for the bulk path: routes, neighbours, FDB, nexthops.

pyroute2 decodes every attribute of every message (~270 us a request here); this packs many
requests into one send, checks every ACK and maps a failure back to the request that caused it,
and parses only the fields the reconciler compares. What the tables keep of an entry is a key
and a value of packed bytes (or an id), so that a dump of 20k entries and its diff cost
milliseconds and 20k entries cost little memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from vxnet.errors import VxnetError

# --- constants (linux/netlink.h, rtnetlink.h, neighbour.h, nexthop.h) ----------
NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE = 2, 3, 0x10  # below MIN_TYPE: control messages
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x300, 0x100, 0x400
SOL_NETLINK = 270
SO_ATTACH_FILTER = 26
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
NDA_DST, NDA_LLADDR, NDA_CACHEINFO, NDA_IFINDEX = 1, 2, 3, 8
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
# Bytes asked for per read. The kernel's datagrams are at most 32 KiB (a dump's; a notification
# or an ACK is one small message), and a bigger ask is not free: CPython allocates it whole on
# every read, and one of 1 MiB is an mmap and munmap each time -- 27 us against 3, paid for
# each of the tens of thousands of notifications a first sync echoes to the monitor.
RECV_SIZE = 64 * 1024


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
# What the tables keep is compact: a key and a value per entry, each bytes (or an int), never an
# object per entry. Addresses are packed (4 or 16 bytes), MACs 6. FDB: MAC -> remote IP;
# neighbour: address -> MAC; nexthop: id -> gateway; route: route_key() -> route_value(). The
# table supplies what is the same for all its entries (family, device, protocol, state).

_RV = struct.Struct("=BBII")  # a route's value: protocol, onlink, nhid, oif; then the gateway


def route_key(dst: bytes, dst_len: int) -> bytes:
    return dst + bytes((dst_len,))


def route_value(protocol: int, *, nhid: int = 0, oif: int = 0, gateway: bytes = b"",
                onlink: bool = False) -> bytes:
    """A route via a nexthop object (nhid), or via a gateway (or none) on oif."""
    if nhid:  # the nexthop object holds oif/gateway; the kernel repeats them for old tools
        return _RV.pack(protocol, 0, nhid, 0)
    return _RV.pack(protocol, onlink, 0, oif) + gateway


def route_fields(value: bytes) -> tuple[int, bool, int, int, bytes]:
    """(protocol, onlink, nhid, oif, gateway) of a route_value()."""
    proto, onlink, nhid, oif = _RV.unpack_from(value)
    return proto, bool(onlink), nhid, oif, value[_RV.size:]


def route_nhid(value: bytes) -> int:
    return int(_u32_at(value, 2)[0])


# --- request bodies ----------
# The per-peer messages (route via a nexthop, nexthop, neighbour, FDB entry) are packed by one
# precompiled struct each, per address length: a 20 000-peer pass builds 80 000 of them, and
# attribute-by-attribute concatenation was a third of its time. tests/unit/kernel/test_codec.py
# checks each against an attribute-by-attribute encoder, byte for byte.

def _layouts(fmt: str) -> dict[int, struct.Struct]:
    """`fmt` with {a} standing for an address: a struct per address length (IPv4, IPv6)."""
    return {n: struct.Struct("=" + fmt.format(a=f"{n}s")) for n in (4, 16)}


_ROUTE_NH = _layouts("BBBBBBBBI HHI HH{a} HHI")  # rtmsg, RTA_TABLE, RTA_DST, RTA_NH_ID
_NEXTHOP = _layouts("BBBBI HHI HHI HH{a}")  # nhmsg, NHA_ID, NHA_OIF, NHA_GATEWAY
_NEIGH = _layouts("BxxxiHBB HH{a} HH6sxx")  # ndmsg, NDA_DST, NDA_LLADDR
_FDB = _layouts("BxxxiHBB HH6sxx HH{a}")  # ndmsg, NDA_LLADDR, NDA_DST
_NEIGH_DEL = _layouts("BxxxiHBB HH{a}")  # ndmsg, NDA_DST
_NHMSG_ID = struct.Struct("=BBBBI HHI")  # nhmsg, NHA_ID


def route_body(family: int, key: bytes, value: bytes, table: int = RT_TABLE_MAIN) -> bytes:
    """The rtmsg and attributes of route `key` (route_key()) with `value` (route_value()): what
    a set and a delete both send."""
    dst, dst_len = key[:-1], key[-1]
    proto, onlink, nhid, oif = _RV.unpack_from(value)
    n = len(dst)
    if nhid and table < 256 and n in _ROUTE_NH:
        return _ROUTE_NH[n].pack(family, dst_len, 0, 0, table, proto, RT_SCOPE_UNIVERSE,
                                 RTN_UNICAST, RTNH_F_ONLINK if onlink else 0, 8, RTA_TABLE,
                                 table, 4 + n, RTA_DST, dst, 8, RTA_NH_ID, nhid)
    gateway = value[_RV.size:]
    # a route out of a device with no gateway reaches its destinations directly (on-demand
    # neighbours: the whole pod network through the VXLAN device), as `ip route` makes it
    scope = RT_SCOPE_LINK if oif and not (gateway or nhid) else RT_SCOPE_UNIVERSE
    body = RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else 252, proto, scope,
                      RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
    body += attr(RTA_TABLE, U32.pack(table)) + attr(RTA_DST, dst)
    if nhid:
        return body + attr(RTA_NH_ID, U32.pack(nhid))
    if oif:
        body += attr(RTA_OIF, U32.pack(oif))
    return body + (attr(RTA_GATEWAY, gateway) if gateway else b"")


def neigh_body(family: int, ifindex: int, dst: bytes, mac: bytes, state: int = NUD_PERMANENT
               ) -> bytes:
    n = len(dst)
    return _NEIGH[n].pack(family, ifindex, state, 0, 0, 4 + n, NDA_DST, dst, 10, NDA_LLADDR, mac)


def neigh_del_body(family: int, ifindex: int, dst: bytes) -> bytes:
    n = len(dst)
    return _NEIGH_DEL[n].pack(family, ifindex, 0, 0, 0, 4 + n, NDA_DST, dst)


def fdb_body(ifindex: int, mac: bytes, dst: bytes, state: int = NUD_PERMANENT) -> bytes:
    """NTF_SELF: the vxlan device's own table (no bridge master). A delete sends the same."""
    n = len(dst)
    return _FDB[n].pack(AF_BRIDGE, ifindex, state, NTF_SELF, 0, 10, NDA_LLADDR, mac, 4 + n,
                        NDA_DST, dst)


def nexthop_body(nhid: int, family: int, oif: int, gateway: bytes, protocol: int,
                 onlink: bool = True) -> bytes:
    n = len(gateway)
    return _NEXTHOP[n].pack(family, RT_SCOPE_UNIVERSE, protocol, 0,
                            RTNH_F_ONLINK if onlink else 0, 8, NHA_ID, nhid, 8, NHA_OIF, oif,
                            4 + n, NHA_GATEWAY, gateway)


def nexthop_del_body(nhid: int, family: int) -> bytes:
    return _NHMSG_ID.pack(family, 0, 0, 0, 0, 8, NHA_ID, nhid)


# --- message parsers (dumps and notifications share them) ----------
# Tight loops over just the attributes we compare: what keeps a 20k-entry dump cheap. Each
# returns a plain tuple its caller takes apart at once; what a table keeps is built from it.

_ZERO = {AF_INET: bytes(4), AF_INET6: bytes(16)}
_attr_at = _ATTR.unpack_from
_u32_at = U32.unpack_from
Parsed = tuple[int, int, bytes, int, int, int, int, bytes, bool]


def parse_route(buf: bytes, off: int, end: int) -> Parsed | None:
    """(table, family, dst, dst_len, protocol, nhid, oif, gateway, onlink) of a unicast route,
    or None for anything else. Via a nexthop object, oif and gateway are left out (the kernel
    repeats the nexthop's for old tools)."""
    fam, dlen, _, _, table, proto, _, rtype, flags = RTMSG.unpack_from(buf, off)
    if rtype != RTN_UNICAST:
        return None
    dst = gw = b""
    oif = 0
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
            return table, fam, dst or _ZERO.get(fam, b""), dlen, proto, \
                _u32_at(buf, a + 4)[0], 0, b"", False  # table and dst come first
        elif kind == RTA_OIF:
            oif = _u32_at(buf, a + 4)[0]
        elif kind == RTA_GATEWAY:
            gw = buf[a + 4:a + n]
        a += (n + 3) & ~3
    return table, fam, dst or _ZERO.get(fam, b""), dlen, proto, 0, oif, gw, \
        bool(flags & RTNH_F_ONLINK)


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


def parse_nexthop(buf: bytes, off: int, end: int
                  ) -> tuple[int, int, int, int, bytes, bool] | None:
    """(id, family, protocol, oif, gateway, onlink) of a gateway nexthop; None for groups,
    blackholes and FDB nexthops."""
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
    return nhid, fam, proto, oif, gw, bool(flags & RTNH_F_ONLINK)


def parse_link(buf: bytes, off: int, end: int) -> tuple[int, int]:
    _, _, index, flags, _ = IFINFO.unpack_from(buf, off)
    return index, flags


# --- the socket ----------

Reply = tuple[bytes, int, int]  # (buffer, payload offset, payload end) of one message
Event = tuple[int, bytes, int, int]  # (message type, buffer, payload offset, payload end)
# the message that ends an exchange: (type, flags, buffer, payload offset, payload end)
_Last = tuple[int, int, bytes, int, int]

_NOTIFICATIONS = -1  # a "sequence number" no request has (theirs are u32): nothing is a reply


@dataclass(frozen=True, slots=True)
class Dump:
    """A dump's replies as the kernel sent them: whole datagrams (NLMSG_DONE cut off), walked
    message by message only when iterated. A periodic resync digests the datagrams and walks
    none of them while nothing changed (table.dump_digest)."""

    datagrams: list[bytes]

    def __iter__(self) -> Iterator[Reply]:
        hdr_at = _HDR.unpack_from
        for data in self.datagrams:
            off, size = 0, len(data)
            while off + 16 <= size:
                n = hdr_at(data, off)[0]
                if n < 16:
                    break
                yield data, off + 16, off + n
                off += (n + 3) & ~3


def uniform(data: bytes) -> int:
    """The length of every message in `data` if they are all one length and one type and the
    datagram holds nothing else (told by strided slices, at C speed); else 0. A dump of our
    entries mostly comes as such datagrams, which need no walk to be digested or ended."""
    if len(data) < 16:
        return 0
    n = _HDR.unpack_from(data)[0]
    if n < 16 or n % 4 or len(data) % n:
        return 0
    count = len(data) // n
    return n if all(data[i::n] == data[i:i + 1] * count for i in range(6)) else 0


@dataclass(frozen=True, slots=True)
class Failure:
    """A request of a batch the kernel refused: its index, the errno, what the kernel said."""

    index: int
    errno: int
    detail: str = ""


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
        self._recv_size = RECV_SIZE  # grown if a datagram ever came cut
        self.requests = 0  # kernel writes sent, for metrics and tests

    def drop_echoes(self, portid: int) -> None:
        """Have the kernel drop, before they are queued, the notifications that name `portid`
        as their requester (the echo of that socket's own writes): a classic BPF filter on
        the first message's nlmsg_pid, each notification being a datagram of its own. Left to
        Python, a 20 000-peer first sync read 60 000 echoes one recvmsg at a time."""
        pid = int.from_bytes(struct.pack("=I", portid), "big")  # BPF loads are big-endian
        program = b"".join(struct.pack("=HBBI", *insn) for insn in (
            (0x20, 0, 0, 12),  # A = the word at offset 12: nlmsg_pid
            (0x15, 1, 0, pid),  # if A == pid, skip one
            (0x06, 0, 0, 0xFFFFFFFF),  # keep the datagram
            (0x06, 0, 0, 0)))  # drop it
        code = ctypes.create_string_buffer(program)
        # struct sock_fprog: the instruction count, then (aligned) a pointer to them
        fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(code))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

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
                 events: list[Event] | None = ..., once: Literal[False] = ...) -> _Last: ...

    @overload
    def _receive(self, seq: int, replies: list[Reply],
                 errors: list[tuple[int, bytes, int, int]] | None = ...,
                 events: list[Event] | None = ..., *, once: Literal[True]) -> None: ...

    def _receive(self, seq: int, replies: list[Reply],
                 errors: list[tuple[int, bytes, int, int]] | None = None,
                 events: list[Event] | None = None, once: bool = False) -> _Last | None:
        """The one receive loop and header walk of every exchange with the kernel.

        Reads until the message that ends request `seq` -- its ACK or error, or a dump's
        NLMSG_DONE -- and returns it as (type, flags, buffer, payload offset, payload end).
        On the way, the payloads of the other replies to `seq` go to `replies`; errors
        answering other requests (a batch's earlier ones) to `errors` as (seq, buffer, payload
        offset, payload end); everything else to `events`.
        `once`: read one datagram only, without blocking (BlockingIOError when none is queued),
        and return None.
        """
        while True:
            data = self._recv_datagram(once)
            last = self._walk(data, seq, replies, errors, events)
            if last is not None or once:
                return last

    def _recv_datagram(self, once: bool = False) -> bytes:
        """One datagram (`once`: without blocking, BlockingIOError when none is queued). One
        cut short raises EMSGSIZE, and the reads are bigger from then on (the caller
        retries; an event socket resyncs)."""
        data, _, cut, _ = self.sock.recvmsg(self._recv_size, 0,
                                            socket.MSG_DONTWAIT if once else 0)
        if cut & socket.MSG_TRUNC:
            self._recv_size *= 4
            raise OSError(errno.EMSGSIZE, f"a netlink datagram over {len(data)} bytes was "
                          "cut short")
        return data

    @staticmethod
    def _walk(data: bytes, seq: int, replies: list[Reply],
              errors: list[tuple[int, bytes, int, int]] | None,
              events: list[Event] | None) -> _Last | None:
        """One datagram's messages filed as _receive says; the message that ends request
        `seq`, if this datagram holds it. Inline, not a generator per message: it is the
        whole Python cost of a 20 000-entry exchange beyond the parsers."""
        hdr_at, add = _HDR.unpack_from, replies.append
        error, done, control = NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE
        off, size = 0, len(data)
        while off + 16 <= size:
            n, t, flags, s, _ = hdr_at(data, off)
            if n < 16:
                break
            if s == seq:
                if t < control and t in (error, done):
                    return t, flags, data, off + 16, off + n
                add((data, off + 16, off + n))
            elif t == error and errors is not None:
                errors.append((s, data, off + 16, off + n))
            elif events is not None:
                events.append((t, data, off + 16, off + n))
            off += (n + 3) & ~3
        return None

    def batch(self, mtype: int, flags: int, bodies: Sequence[bytes]) -> list[Failure]:
        """Send one request of type `mtype` per body, many per send. Returns the failures, each
        with the index of its body; the kernel goes on past a failed request.

        The kernel handles a whole send before the call returns and always reports an error, so
        only each chunk's last request asks for an ACK: every error queued before that ACK is
        one of the chunk's, and no error means success. One receive per chunk, not per entry.
        """
        failures: list[Failure] = []
        n = len(bodies)
        if not n:
            return failures
        if self._seq + n >= 0xFFFFFFFF:  # the batch's sequence numbers never wrap
            self._seq = 0
        first = self._seq + 1  # the sequence number of bodies[0]; body i has first + i
        self._seq += n
        flags |= NLM_F_REQUEST
        pack = _HDR.pack
        per = max(1, CHUNK // (16 + len(bodies[0])))  # a table's bodies are all alike in size
        for at in range(0, n, per):
            chunk = bodies[at:at + per]
            seq = first + at
            last = seq + len(chunk) - 1
            parts = [pack(16 + len(b), mtype, flags, s, 0) + b
                     for s, b in zip(range(seq, last), chunk[:-1], strict=True)]
            parts.append(pack(16 + len(chunk[-1]), mtype, flags | NLM_F_ACK, last, 0)
                         + chunk[-1])
            self.sock.send(b"".join(parts))
            self.requests += len(chunk)
            errors: list[tuple[int, bytes, int, int]] = []
            _, _, data, off, end = self._receive(last, [], errors)
            errors.append((last, data, off, end))
            for s, data, off, end in errors:
                code = -_ERR.unpack_from(data, off)[0]
                if code and seq <= s <= last:
                    failures.append(Failure(s - first, code, _ext_ack(data, off, end)))
        return failures

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

    def dump(self, mtype: int, body: bytes) -> Iterable[Reply]:
        """Every message of a dump (a Dump: the datagrams that carried them, DONE cut off).
        Restarts the dump if the kernel says a concurrent change interrupted it (flagged on
        NLMSG_DONE). A datagram of equally long messages of one type (uniform()) is taken
        whole, unwalked; any other (the last one, with DONE) is walked here."""
        for _ in range(5):
            seq = self._send(mtype, NLM_F_DUMP, body)
            datagrams: list[bytes] = []
            while True:
                data = self._recv_datagram()
                ours = len(data) >= 16 and _HDR.unpack_from(data)[3] == seq
                if ours and uniform(data) and _HDR.unpack_from(data)[1] >= NLMSG_MIN_TYPE:
                    datagrams.append(data)  # entries only: no DONE or error among them
                    continue
                last = self._walk(data, seq, [], None, None)
                if last is None:  # no end in it: entries of ours, or a stale reply
                    if ours:
                        datagrams.append(data)
                    continue
                t, flags, _, off, end = last
                if t == NLMSG_ERROR:
                    raise NetlinkError(-_ERR.unpack_from(data, off)[0], f"dump {mtype}",
                                       _ext_ack(data, off, end))
                if off > 16:
                    datagrams.append(data[:off - 16])
                break
            if not flags & NLM_F_DUMP_INTR:
                return Dump(datagrams)
        raise NetlinkError(errno.EINTR, f"dump {mtype}", "interrupted five times")

    @property
    def portid(self) -> int:
        """The socket's netlink port: what the kernel's notifications of its requests carry."""
        return int(self.sock.getsockname()[0])

    def recv_events(self, datagrams: int = 1000) -> Iterator[Event]:
        """Queued notifications, without blocking, at most `datagrams` reads' worth (the rest
        stays queued for the next call, so a flood of them never holds the event loop long).
        ENOBUFS (events lost) propagates."""
        events: list[Event] = []
        for _ in range(datagrams):
            try:
                self._receive(_NOTIFICATIONS, [], events=events, once=True)
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
