"""The VXLAN ingress allow-list: UDP to our VXLAN port is accepted only from the public IPs of
current peers; everything else on that port is dropped, counted, and its source remembered.

It lives in a table vxnet owns (`inet vxnet-vxlan`, an OwnedTable: nftables.py) and is kept
in step like any other table: desired = the peers' public IPs; what the kernel holds is cached
and changed incrementally (one nft transaction per batch); a full check lists the table, puts
it back if it is not as we loaded it, and puts back the peers someone else changed, on every
change somebody else made to it (nftables notifications, a TableWatch) and on a timer. A whole
load is one transaction (delete + create), so packets never see a moment without rules, and a
restart leaves the old table in force until the new agent has its peers.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from vxnet.backoff import Backoff
from vxnet.errors import VxnetError
from vxnet.ip import IPAddress
from vxnet.kernel.nftables import Doc, OwnedTable, TableWatch

log = logging.getLogger(__name__)

TABLE = "vxnet-vxlan"
REFUSED_SET_SIZE = 1024  # distinct refused sources remembered (per family), each for an hour


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


@dataclass(frozen=True, slots=True)
class AllowStatus:
    port: int
    peers: int | None  # addresses in the kernel's set (None: not known yet)
    in_step: bool  # the set holds exactly the peers' public IPs
    repairs: int  # tampering found and undone
    refused_packets: int
    refused_sources: dict[str, int]  # source IP -> packets refused (last hour)


class AllowList:
    def __init__(self, port: int, peers: Callable[[], AbstractSet[IPAddress]], *,
                 netns: str | None = None) -> None:
        self.port, self.peers, self.netns = port, peers, netns
        self.kernel: set[IPAddress] | None = None  # None: unknown, the next sync checks in full
        self.table = OwnedTable("inet", TABLE, "the VXLAN allow-list", netns=netns)
        self.watch = TableWatch(lambda: (self.table,), netns=netns)
        self.refused_packets = 0
        self.refused_sources: dict[str, int] = {}  # source IP -> packets (last hour)
        self._refused_at: dict[str, float] = {}  # source IP -> when its count last rose
        self._peer_repairs = 0  # peers someone else added or removed, put back

    @property
    def repairs(self) -> int:
        """Tampering found and undone: the table (its rules, its sets, itself) or its peers."""
        return self.table.repairs + self._peer_repairs

    def status(self) -> AllowStatus:
        k = self.kernel
        return AllowStatus(self.port, None if k is None else len(k), k == self.peers(),
                           self.repairs, self.refused_packets,
                           dict(sorted(self.refused_sources.items())))

    # -- what the agent calls ----------

    async def ensure_table(self) -> None:
        """Before the VXLAN device exists: the table must be in place. One left by an earlier
        run stays untouched (its peers keep their traffic) until sync() has ours."""
        if not await self.table.exists():
            await self._load(set())

    def changed(self) -> None:
        """The peer set may have changed: apply the difference soon (once per batch)."""
        self.watch.poke()

    async def sync(self, full: bool = False, keep_extra: bool = False) -> None:
        """Bring the kernel in step with peers(). full: list the table and repair whatever
        differs from what we loaded (rules, sets, the table itself). keep_extra: only add --
        start-up knows part of the peers yet, and those a table left by an earlier run lets
        in keep their way in. Raises NftError; the cache then is unknown, so the next sync is
        a full one."""
        want = self.peers()
        try:
            if keep_extra:
                held = self.kernel
                if held is None:
                    held = _peers(await self.table.listing())
                want = want | held
            have = self.kernel
            if full or have is None or self.table.shape is None:
                have = await self._check(want)
            if have != want:
                v4 = sorted(str(ip) for ip in want - have if ip.version == 4)
                v6 = sorted(str(ip) for ip in want - have if ip.version == 6)
                gone4 = sorted(str(ip) for ip in have - want if ip.version == 4)
                gone6 = sorted(str(ip) for ip in have - want if ip.version == 6)
                await self.table.apply(_elements("add", v4, v6)
                                       + _elements("delete", gone4, gone6),
                                       "the VXLAN allow-list peers")
                self.kernel = set(want)
        except BaseException:
            self.kernel = None
            raise

    async def run(self, interval: float, stats_interval: float = 5.0) -> None:
        """Keep the table in step until cancelled: batches as changed() signals them, a full
        check when someone else touched the table and every `interval` seconds, the refused
        counters every `stats_interval`."""
        backoff = Backoff(0.2, 10)
        now = time.monotonic()
        next_full, next_stats = now + interval, now + stats_interval
        with self.watch:
            while True:
                tampered = await self.watch.wait(min(next_full, next_stats) - time.monotonic())
                now = time.monotonic()
                full = tampered or now >= next_full
                try:
                    await self.sync(full)
                    if now >= next_stats:
                        await self.refresh_stats()
                        next_stats = now + stats_interval
                except VxnetError as e:
                    log.warning("VXLAN allow-list: %s", e)
                    await backoff.sleep()
                    self.watch.poke()  # try again
                    continue
                backoff.reset()
                if full:
                    next_full = now + interval

    # -- internals ----------

    async def _load(self, want: AbstractSet[IPAddress]) -> None:
        await self.table.load(script(self.port, want))
        self.kernel = set(want)

    async def _check(self, want: AbstractSet[IPAddress]) -> set[IPAddress]:
        """The table put back if it is not as we loaded it (then it holds `want`), else its
        peers read, and counted as a repair if they are not what we left there. Returns the
        peers now in the kernel, which self.kernel is set to."""
        doc = await self.table.check(lambda: script(self.port, want))
        if doc is None:
            self.kernel = set(want)
            return self.kernel
        self._read_stats(doc)
        have = _peers(doc)
        if self.kernel is not None and have != self.kernel:
            self._peer_repairs += 1
            log.warning("VXLAN allow-list peers changed by someone else (%d missing, %d extra); "
                        "putting them back", len(self.kernel - have), len(have - self.kernel))
        self.kernel = have
        return have

    async def refresh_stats(self) -> None:
        """The drop counter; the refused sources too, but only when it moved."""
        before = self.refused_packets
        docs = [await self.table.listing("counter", "refused")]
        self._read_stats(docs[0])
        if self.refused_packets != before:
            docs += [await self.table.listing("set", name) for name in ("refused4", "refused6")]
            self._read_stats({"nftables": [o for d in docs for o in d.get("nftables", [])]})

    def _read_stats(self, doc: Doc) -> None:
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
        now = time.monotonic()
        for src, n in sources.items():
            if n > self.refused_sources.get(src, 0):
                self._refused_at[src] = now
        self._refused_at = {s: t for s, t in self._refused_at.items() if s in sources}
        self.refused_sources = sources

    def refused_lately(self, seconds: float) -> frozenset[str]:
        """Sources whose packets were refused in the last `seconds` (the sets remember an
        hour: a node refused once while the cluster formed is not refused now)."""
        since = time.monotonic() - seconds
        return frozenset(s for s, t in self._refused_at.items() if t >= since)


def _peers(doc: Doc) -> set[IPAddress]:
    """The peers in a listing of the table."""
    have: set[IPAddress] = set()
    for obj in doc.get("nftables", ()):
        s = obj.get("set")
        if s and s["name"] in ("peers4", "peers6"):
            have.update(ipaddress.ip_address(e) for e in s.get("elem", ()))
    return have
