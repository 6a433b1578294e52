"""On-demand neighbours (kopeio's vxlan, flannel's first backend): the kernel asks, we answer.

With one route for the whole pod network through the VXLAN device, the kernel resolves each
remote pod's address itself. The device's neighbour `app_solicit` sysctl makes it ask us over
netlink (an L3 miss: RTM_GETNEIGH with the address); we answer with the VTEP MAC of the node
whose subnet holds it, as a REACHABLE entry the kernel ages out when the pod goes quiet. With
the device's l2miss flag the FDB side is asked for too (an L2 miss: the MAC only), answered
with that node's public IP. So a node holds entries only for the pods it talks to.

What we answered is kept like any other table (the cache follows success only), except that
its desired state follows the kernel: an entry the kernel ages out is forgotten, not put back.
A peer that goes or changes its MAC has every entry through its MAC rewritten or removed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from vxnet.kernel import netlink as nl
from vxnet.kernel.table import DeltaTable

log = logging.getLogger(__name__)

# states in which the kernel uses an entry without asking; PROBE/INCOMPLETE/FAILED want an answer
_USABLE = nl.NUD_REACHABLE | nl.NUD_STALE | nl.NUD_DELAY
RATE, BURST = 2000.0, 500  # answers per second, and how many may come at once
UNKNOWN_LOG_EVERY = 60.0  # seconds between warnings about misses no node owns


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _show(b: bytes) -> str:
    import ipaddress
    return b.hex(":") if len(b) == 6 else str(ipaddress.ip_address(b))


class MissResolver:
    """Answers one device's misses from memory. `owner_mac(addr)`: the VTEP MAC of the peer
    whose subnet holds addr; `mac_ip(mac)`: the public IP of the peer with that VTEP MAC."""

    def __init__(self, family: int, ifindex: int, *, neighbours: bool, fdb: bool,
                 owner_mac: Callable[[bytes], bytes | None],
                 mac_ip: Callable[[bytes], bytes | None],
                 limiter: TokenBucket | None = None) -> None:
        self.family, self.ifindex = family, ifindex
        self.owner_mac, self.mac_ip = owner_mac, mac_ip
        self.neigh: DeltaTable[nl.NeighKey, bytes] | None = DeltaTable(
            "neigh-on-demand", lambda k, v: nl.neigh_set(k, v, nl.NUD_REACHABLE), nl.neigh_del,
            lambda k: _show(k.dst)) if neighbours else None
        self.fdb: DeltaTable[nl.FdbKey, bytes] | None = DeltaTable(
            "fdb-on-demand", lambda k, v: nl.fdb_set(k, v, nl.NUD_REACHABLE), nl.fdb_del,
            lambda k: k.mac.hex(":")) if fdb else None
        self.limiter = limiter or TokenBucket(RATE, BURST)
        self.misses: Counter[str] = Counter()  # "l3 answered", "l2 unknown", "l3 limited"...
        self.last_unknown: str | None = None
        self._unknown_logged = 0.0
        self._recheck: set[bytes] = set()  # peer MACs whose entries must be looked at again

    @property
    def tables(self) -> tuple[DeltaTable[Any, Any], ...]:
        return tuple(t for t in (self.fdb, self.neigh) if t is not None)

    # -- the kernel asks ----------

    def on_miss(self, fam: int, dst: bytes | None, lladdr: bytes | None) -> bool:
        """A miss on our device, classified by its attributes: an address (L3: who has it?)
        or a MAC only (L2: where does it live?). True if an answer is queued."""
        if dst and any(dst):
            return fam == self.family and self._l3(dst)
        return lladdr is not None and self._l2(lladdr)

    def _l3(self, dst: bytes) -> bool:
        if self.neigh is None:
            return False
        mac = self.owner_mac(dst)
        if mac is None:
            return self._unknown("l3", dst)
        if not self._answer("l3", self.neigh, nl.NeighKey(self.family, self.ifindex, dst), mac):
            return False
        # with the FDB on demand too, its entry comes with the answer: the kernel would
        # otherwise drop the first packet on an L2 miss and ask again
        if self.fdb is not None and nl.FdbKey(self.ifindex, mac) not in self.fdb.kernel:
            self._l2(mac)
        return True

    def _l2(self, mac: bytes) -> bool:
        if self.fdb is None:
            return False
        ip = self.mac_ip(mac)
        if ip is None:
            return self._unknown("l2", mac)
        return self._answer("l2", self.fdb, nl.FdbKey(self.ifindex, mac), ip)

    def _answer(self, kind: str, table: DeltaTable[Any, Any], key: Any, value: bytes) -> bool:
        if key in table.dirty and table.desired.get(key) == value:
            return True  # already on its way
        if not self.limiter.take():
            self.misses[f"{kind} limited"] += 1  # the kernel asks again (app_solicit probes)
            return False
        self.misses[f"{kind} answered"] += 1
        # a miss means the kernel cannot use what it has: write even if the cache says it's there
        table.kernel.pop(key, None)
        table.desired[key] = value
        table.dirty.add(key)
        return True

    def _unknown(self, kind: str, what: bytes) -> bool:
        self.misses[f"{kind} unknown"] += 1
        self.last_unknown = _show(what)
        now = time.monotonic()
        if now - self._unknown_logged >= UNKNOWN_LOG_EVERY:
            self._unknown_logged = now
            log.warning("ignoring %s misses for addresses no node owns (%d so far, last %s)",
                        kind.upper(), self.misses[f"{kind} unknown"], self.last_unknown)
        return False

    # -- what the kernel holds ----------

    def table_for(self, fam: int, state: int) -> DeltaTable[Any, Any] | None:
        """Our table for a non-permanent entry on our device, if we answer that kind."""
        if state & nl.NUD_PERMANENT:
            return None
        return self.fdb if fam == nl.AF_BRIDGE else self.neigh if fam == self.family else None

    @staticmethod
    def value(state: int, value: bytes | None) -> bytes | None:
        return value if value and state & _USABLE else None

    def _want(self, table: DeltaTable[Any, Any], key: Any) -> bytes | None:
        return self.owner_mac(key.dst) if table is self.neigh else self.mac_ip(key.mac)

    def seen(self, table: DeltaTable[Any, Any], key: Any, value: bytes | None) -> None:
        """The kernel now holds `value` (None: nothing usable). An entry that went is
        forgotten unless an answer is on its way; one that is there is checked against its
        owner now (put right or removed)."""
        if value is None:
            table.kernel.pop(key, None)
            if key not in table.dirty:
                table.desired.pop(key, None)
            return
        table.kernel[key] = value
        self._settle(table, key)

    def _settle(self, table: DeltaTable[Any, Any], key: Any) -> None:
        want = self._want(table, key)
        if want is None:
            table.desired.pop(key, None)
        else:
            table.desired[key] = want
        if want != table.kernel.get(key):
            table.dirty.add(key)

    def load(self, table: DeltaTable[Any, Any], kernel: dict[Any, bytes]) -> None:
        """A fresh dump: what the kernel holds, each entry checked against its owner now.
        Answers not yet written stay; what the kernel no longer has is forgotten."""
        pending = {k: table.desired[k] for k in table.dirty if k in table.desired}
        table.kernel, table.desired, table.dirty = {}, pending, set(pending)
        for key, value in kernel.items():
            self.seen(table, key, value)

    def peer_changed(self, mac: bytes) -> None:
        """A peer with this VTEP MAC went, came or changed: look at its entries again."""
        self._recheck.add(mac)

    def recheck(self) -> None:
        """Entries (and answers on their way) through the MACs of changed peers: rewritten to
        their owner now, or removed if no node owns them. Once per pass, not per event."""
        if not self._recheck:
            return
        macs, self._recheck = self._recheck, set()
        for table, through in ((self.neigh, lambda k, v: v in macs),
                               (self.fdb, lambda k, v: k.mac in macs)):
            if table is None:
                continue
            keys = [k for d in (table.kernel, table.desired) for k, v in d.items()
                    if through(k, v)]
            for key in keys:
                self._settle(table, key)
