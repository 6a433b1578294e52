"""The VXLAN ingress allow-list: UDP to our VXLAN port is accepted only from the public IPs of
current peers; everything else on that port is dropped, counted, and its source remembered.

It lives in a table vxnet owns (`inet vxnet-vxlan`) and is kept in step like any other table:
desired = the peers' public IPs; what the kernel holds is cached and changed incrementally (one
nft transaction per batch); a full check lists the table, compares it with what we loaded and
repairs it, on every ruleset change somebody else made (nftables notifications) and on a timer.
A whole load is one transaction (delete + create), so packets never see a moment without rules,
and a restart leaves the old table in force until the new agent has its peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vxnet.backoff import Backoff
from vxnet.errors import VxnetError
from vxnet.ip import IPAddress
from vxnet.kernel import nft
from vxnet.kernel.events import EventSocket
from vxnet.kernel.netlink import Event, parse_attrs

log = logging.getLogger(__name__)

TABLE = "vxnet-vxlan"
REFUSED_SET_SIZE = 1024  # distinct refused sources remembered (per family), each for an hour

# nfnetlink: notifications of nftables changes, to notice tampering at once
NETLINK_NETFILTER, NFNLGRP_NFTABLES, NFNL_SUBSYS_NFTABLES = 12, 7, 10
NFT_MSG_NEWGEN, NFTA_GEN_PROC_PID, NFPROTO_INET = 15, 2, 1
_BE32 = struct.Struct("!I")


def script(port: int, peers: Iterable[IPAddress]) -> str:
    """The whole table with its peers, as one transaction."""
    v4 = sorted(str(ip) for ip in peers if ip.version == 4)
    v6 = sorted(str(ip) for ip in peers if ip.version == 6)
    refused = (f"size {REFUSED_SET_SIZE}; flags dynamic,timeout; timeout 1h; counter;")
    out = f"""add table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  counter refused {{ }}
  set peers4 {{ type ipv4_addr; }}
  set peers6 {{ type ipv6_addr; }}
  set refused4 {{ type ipv4_addr; {refused} }}
  set refused6 {{ type ipv6_addr; {refused} }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    udp dport {port} ip saddr @peers4 accept
    udp dport {port} ip6 saddr @peers6 accept
    udp dport {port} update @refused4 {{ ip saddr }}
    udp dport {port} update @refused6 {{ ip6 saddr }}
    udp dport {port} counter name "refused" drop
  }}
}}
"""
    # the source is remembered by a rule of its own: when the set is full the update fails and
    # ends only that rule, never the drop
    return out + _elements("add", v4, v6)


def _elements(verb: str, v4: list[str], v6: list[str]) -> str:
    return "".join(f"{verb} element inet {TABLE} {name} {{ {', '.join(ips)} }}\n"
                   for name, ips in (("peers4", v4), ("peers6", v6)) if ips)


def _shape(doc: dict[str, Any]) -> list[Any]:
    """The table as listed, without what changes by itself (set elements, counter values)."""
    out = []
    for obj in doc.get("nftables", []):
        if "metainfo" in obj:
            continue
        kind, body = next(iter(obj.items()))
        body = {k: v for k, v in body.items() if k not in ("elem", "packets", "bytes")}
        out.append((kind, body))
    return out


@dataclass(frozen=True, slots=True)
class AllowStatus:
    port: int
    peers: int | None  # addresses in the kernel's set (None: not known yet)
    in_step: bool  # the set holds exactly the peers' public IPs
    repairs: int  # tampering found and undone
    refused_packets: int
    refused_sources: dict[str, int]  # source IP -> packets refused (last hour)


class AllowList:
    def __init__(self, port: int, peers: Callable[[], set[IPAddress]], *,
                 netns: str | None = None) -> None:
        self.port, self.peers, self.netns = port, peers, netns
        self.kernel: set[IPAddress] | None = None  # None: unknown, the next sync checks in full
        self.repairs = 0  # tampering found and undone
        self.refused_packets = 0
        self.refused_sources: dict[str, int] = {}  # source IP -> packets (last hour)
        self._shape: list[Any] | None = None  # our table as listed right after we loaded it
        self._wake = asyncio.Event()
        self._tampered = False
        self._touched = False  # the transaction being notified changed our table
        self._events = EventSocket((NFNLGRP_NFTABLES,), self._notified, self._lost,
                                   netns=netns, protocol=NETLINK_NETFILTER, rcvbuf=1 << 20,
                                   name="nftables notifications")

    def status(self) -> AllowStatus:
        k = self.kernel
        return AllowStatus(self.port, None if k is None else len(k), k == self.peers(),
                           self.repairs, self.refused_packets,
                           dict(sorted(self.refused_sources.items())))

    # -- what the agent calls ----------

    async def ensure_table(self) -> None:
        """Before the VXLAN device exists: the table must be in place. One left by an earlier
        run stays untouched (its peers keep their traffic) until sync() has ours."""
        rc, _, _ = await nft.nft("list", "table", "inet", TABLE, netns=self.netns)
        if rc != 0:
            await self._load(set())

    def changed(self) -> None:
        """The peer set may have changed: apply the difference soon (once per batch)."""
        self._wake.set()

    async def sync(self, full: bool = False) -> None:
        """Bring the kernel in step with peers(). full: list the table and repair whatever
        differs from what we loaded (rules, sets, the table itself). Raises NftError; the
        cache then is unknown, so the next sync is a full one."""
        want = self.peers()
        try:
            if full or self.kernel is None or self._shape is None:
                await self._check(want)
            have = self.kernel
            assert have is not None
            if have != want:
                v4 = sorted(str(ip) for ip in want - have if ip.version == 4)
                v6 = sorted(str(ip) for ip in want - have if ip.version == 6)
                gone4 = sorted(str(ip) for ip in have - want if ip.version == 4)
                gone6 = sorted(str(ip) for ip in have - want if ip.version == 6)
                await nft.load(_elements("add", v4, v6) + _elements("delete", gone4, gone6),
                               "the VXLAN allow-list peers", self.netns)
                self.kernel = set(want)
        except BaseException:
            self.kernel = None
            raise

    async def run(self, interval: float, stats_interval: float = 5.0) -> None:
        """Keep the table in step until cancelled: batches as changed() signals them, a full
        check when someone else touched nftables and every `interval` seconds, the refused
        counters every `stats_interval`."""
        self._open()
        backoff = Backoff(0.2, 10)
        now = time.monotonic()
        next_full, next_stats = now + interval, now + stats_interval
        try:
            while True:
                timeout = max(0.0, min(next_full, next_stats) - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                now = time.monotonic()
                full, self._tampered = self._tampered or now >= next_full, False
                try:
                    await self.sync(full)
                    if now >= next_stats:
                        await self.refresh_stats()
                        next_stats = now + stats_interval
                except VxnetError as e:
                    log.warning("VXLAN allow-list: %s", e)
                    await backoff.sleep()
                    self._wake.set()  # try again
                    continue
                backoff.reset()
                if full:
                    next_full = now + interval
        finally:
            self._close()

    # -- internals ----------

    async def _load(self, want: set[IPAddress]) -> None:
        await nft.load(script(self.port, want), "the VXLAN allow-list", self.netns)
        doc = await self._list()
        self._shape = _shape(doc) if doc else None
        self.kernel = set(want)

    async def _list(self) -> dict[str, Any] | None:
        doc = await self._json("list", "table", "inet", TABLE)
        return doc or None

    async def _json(self, *args: str) -> dict[str, Any]:
        """nft -j ARGS, parsed; {} when the object is not there."""
        rc, out, _ = await nft.nft("-j", *args, netns=self.netns)
        if rc != 0 or not out.strip():
            return {}
        try:
            doc: dict[str, Any] = json.loads(out)
        except ValueError:
            raise nft.NftError(f"nft -j {' '.join(args)}: not JSON: {out[:80]!r}") from None
        return doc

    async def _check(self, want: set[IPAddress]) -> None:
        doc = await self._list()
        if doc is None or self._shape is None or _shape(doc) != self._shape:
            if self._shape is not None:  # not our first load: someone changed it
                self.repairs += 1
                log.warning("VXLAN allow-list table %s: %s; loading it again", TABLE,
                            "gone" if doc is None else "rules or sets changed")
            await self._load(want)
            return
        self._read_stats(doc)
        have: set[IPAddress] = set()
        for obj in doc["nftables"]:
            s = obj.get("set")
            if s and s["name"] in ("peers4", "peers6"):
                have.update(ipaddress.ip_address(e) for e in s.get("elem", ()))
        if self.kernel is not None and have != self.kernel:
            self.repairs += 1
            log.warning("VXLAN allow-list peers changed by someone else (%d missing, %d extra); "
                        "putting them back", len(self.kernel - have), len(have - self.kernel))
        self.kernel = have

    async def refresh_stats(self) -> None:
        """The drop counter; the refused sources too, but only when it moved."""
        before = self.refused_packets
        docs = [await self._json("list", "counter", "inet", TABLE, "refused")]
        self._read_stats(docs[0])
        if self.refused_packets != before:
            docs += [await self._json("list", "set", "inet", TABLE, name)
                     for name in ("refused4", "refused6")]
            self._read_stats({"nftables": [o for d in docs for o in d.get("nftables", [])]})

    def _read_stats(self, doc: dict[str, Any]) -> None:
        sources: dict[str, int] | None = None
        for obj in doc.get("nftables", []):
            if "counter" in obj and obj["counter"].get("name") == "refused":
                self.refused_packets = int(obj["counter"].get("packets", 0))
            s = obj.get("set")
            if s and s["name"] in ("refused4", "refused6"):
                sources = {} if sources is None else sources
                for e in s.get("elem", ()):
                    if isinstance(e, dict) and isinstance(e.get("elem", {}).get("val"), str):
                        e = e["elem"]
                        sources[e["val"]] = int(e.get("counter", {}).get("packets", 0))
        if sources is None:  # the listing had no sets in it
            return
        for src in sources.keys() - self.refused_sources.keys():
            log.warning("VXLAN packets from %s refused: not a cluster member's public IP", src)
        self.refused_sources = sources

    # -- notifications of ruleset changes ----------

    def _open(self) -> None:
        self._touched = False
        self._events.open()

    def _close(self) -> None:
        self._events.close()

    def _notified(self, events: list[Event]) -> None:
        """A transaction's notifications end with NEWGEN naming the committing process: ours
        (an nft we ran) are expected; anyone else's that touched our table is tampering."""
        for mtype, buf, off, end in events:
            if mtype >> 8 != NFNL_SUBSYS_NFTABLES or off + 4 > end:
                continue
            attrs = parse_attrs(buf, off + 4, end)  # after the nfgenmsg header
            if mtype & 0xFF == NFT_MSG_NEWGEN:
                pid = attrs.get(NFTA_GEN_PROC_PID)
                if self._touched and not (pid and nft.ours(_BE32.unpack(pid[:4])[0])):
                    self._flag()
                self._touched = False
            elif buf[off] == NFPROTO_INET and attrs.get(1, b"").rstrip(b"\0") == TABLE.encode():
                self._touched = True  # attribute 1 names the table in every nf_tables msg

    def _lost(self, _: OSError) -> None:
        """Notifications lost (or the socket failed, and was replaced): assume the worst."""
        self._touched = False
        self._flag()

    def _flag(self) -> None:
        self._tampered = True
        self._wake.set()
