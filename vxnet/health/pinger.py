"""ICMP echo from the agent's event loop: one raw socket per address family, every probe a
future that resolves to the reply's round-trip time and source, or times out. Peers answer
from their kernel: a probe needs nothing on the other side, not even a vxnet agent.

Full-size probes go out with "don't fragment" and the route's cached path MTU ignored
(IP_PMTUDISC_PROBE), so a link on the way with a smaller MTU shows as a lost probe."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

from vxnet.ip import IPAddress

IP_MTU_DISCOVER, IP_PMTUDISC_PROBE = 10, 3  # linux/in.h (not in Python's socket module)
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE = 23, 3
_ECHO = {4: (8, 0), 6: (128, 129)}  # (request, reply) types
_HDR = struct.Struct("!BBHHH")  # type, code, checksum, id, seq
OVERHEAD = {4: 28, 6: 48}
SNDBUF = 8 << 20  # IP + ICMP headers: an echo of `size` bytes carries size - this


@dataclass(frozen=True, slots=True)
class Reply:
    rtt: float
    source: IPAddress


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))  # unpack's tuple is Any to mypy
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """Echo requests and their replies for one address family."""

    def __init__(self, version: int) -> None:
        self.version = version
        if version == 4:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        else:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
        self.sock.setblocking(False)
        # a probe to an address no ARP answers stays charged to this socket for ~3 s: with the
        # default buffer, a few hundred dead peers would block the probes to every other one
        with contextlib.suppress(PermissionError):
            self.sock.setsockopt(socket.SOL_SOCKET, 32, SNDBUF)  # SO_SNDBUFFORCE (root)
        self.ident = os.getpid() & 0xFFFF
        self._seq = 0
        self._pending: dict[int, tuple[asyncio.Future[Reply], float]] = {}
        self.sent = 0
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        for fut, _ in self._pending.values():
            fut.cancel()
        self._pending.clear()

    async def echo(self, dst: IPAddress, size: int = 64, timeout: float = 2.0) -> Reply | None:
        """One echo of `size` bytes (IP packet); its reply, or None if none came in time
        (or the kernel refused to send it, e.g. no route)."""
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        payload = b"vxnet-probe".ljust(max(0, size - OVERHEAD[self.version]), b".")
        req, _ = _ECHO[self.version]
        msg = _HDR.pack(req, 0, 0, self.ident, seq) + payload
        if self.version == 4:  # ICMPv6's checksum is the kernel's (it needs the addresses)
            msg = _HDR.pack(req, 0, _checksum(msg), self.ident, seq) + payload
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        try:
            # waits while the send buffer is full (a probe delayed is not a probe lost)
            await loop.sock_sendto(self.sock, msg, (str(dst), 0))
            self._pending[seq] = (fut, time.perf_counter())
            self.sent += 1
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, OSError):  # lost, or unsendable (too big for a link, no route)
            return None
        finally:
            self._pending.pop(seq, None)

    def _readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued for us; the probe simply times out
                continue
            off = (data[0] & 0x0F) * 4 if self.version == 4 else 0  # IPv4 raw: header first
            if len(data) < off + 8:
                continue
            kind, _, _, ident, seq = _HDR.unpack_from(data, off)
            if kind != _ECHO[self.version][1] or ident != self.ident:
                continue
            pending = self._pending.get(seq)
            if pending is not None and not pending[0].done():
                fut, t0 = pending
                fut.set_result(Reply(time.perf_counter() - t0, ipaddress.ip_address(addr[0])))
