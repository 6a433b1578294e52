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

import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from vxnet.kernel import netlink as nl
from vxnet.kernel.neighbours import NO_MAC, Entry, FdbTable, L2Table, NeighTable

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
    return b.hex(":") if len(b) == 6 else str(ipaddress.ip_address(b))


class Answers(L2Table):
    """Entries we answered: desire follows the kernel (an entry aged out is forgotten, not put
    back), and every entry is checked against the peer that owns it now."""

    def want(self, key: bytes) -> bytes | None:
        """What the owner of this key says the entry should be (None: no node owns it)."""
        raise NotImplementedError

    def seen(self, deleted: bool, key: bytes, value: bytes | None) -> bool:
        """An entry that went is forgotten unless an answer is on its way; one that is there
        is checked against its owner now (put right or removed)."""
        if deleted or value is None:
            self.kernel_forgot(key)
        else:
            self.set_kernel(key, value)
            self.settle(key, self.want(key))
        return True

    def load(self, entries: dict[bytes, bytes]) -> None:
        """A fresh dump: what the kernel holds, each entry checked against its owner now.
        Answers not yet written stay; what the kernel no longer has is forgotten."""
        self.keep_only_pending()
        for key, value in entries.items():
            self.seen(False, key, value)

    def recheck(self, through: Callable[[bytes, bytes], bool]) -> None:
        """Entries (and answers on their way) matching `through`: rewritten to their owner
        now, or removed if no node owns them."""
        keys = [k for k, v in (*self.kernel_items(), *self.desired_items()) if through(k, v)]
        for key in keys:
            self.settle(key, self.want(key))


class AnsweredNeighbours(Answers, NeighTable):
    """Address -> MAC answers, REACHABLE: the kernel ages them out."""

    def __init__(self, family: int, ifindex: int, owner_mac: Callable[[bytes], bytes | None]
                 ) -> None:
        NeighTable.__init__(self, family, ifindex, "neigh-on-demand", nl.NUD_REACHABLE)
        self.owner_mac = owner_mac

    def claim(self, entry: Entry) -> tuple[bytes, bytes | None] | None:
        fam, ifindex, state, _, dst, mac = entry
        if fam != self.family or ifindex != self.ifindex or dst is None \
                or state & nl.NUD_PERMANENT:
            return None
        return dst, mac if mac and state & _USABLE else None

    def want(self, key: bytes) -> bytes | None:
        return self.owner_mac(key)


class AnsweredFdb(Answers, FdbTable):
    """MAC -> remote IP answers, REACHABLE."""

    def __init__(self, ifindex: int, mac_ip: Callable[[bytes], bytes | None]) -> None:
        FdbTable.__init__(self, ifindex, "fdb-on-demand", nl.NUD_REACHABLE)
        self.mac_ip = mac_ip

    def claim(self, entry: Entry) -> tuple[bytes, bytes | None] | None:
        fam, ifindex, state, _, dst, mac = entry
        if fam != nl.AF_BRIDGE or ifindex != self.ifindex or dst is None or mac is None \
                or mac == NO_MAC or state & nl.NUD_PERMANENT:
            return None
        return mac, dst if state & _USABLE else None

    def want(self, key: bytes) -> bytes | None:
        return self.mac_ip(key)


@dataclass(frozen=True, slots=True)
class OnDemandStatus:
    entries: dict[str, int]  # per table: entries the kernel holds from answered misses
    misses: dict[str, int]  # "l3 answered", "l2 unknown", "l3 limited"...
    last_unknown: str | None  # the last address or MAC no node owns


class MissResolver:
    """Answers one device's misses from memory. `owner_mac(addr)`: the VTEP MAC of the peer
    whose subnet holds addr; `mac_ip(mac)`: the public IP of the peer with that VTEP MAC."""

    def __init__(self, family: int, ifindex: int, *, neighbours: bool, fdb: bool,
                 owner_mac: Callable[[bytes], bytes | None],
                 mac_ip: Callable[[bytes], bytes | None],
                 limiter: TokenBucket | None = None) -> None:
        self.family = family
        self.owner_mac, self.mac_ip = owner_mac, mac_ip
        self.ifindex = ifindex
        self.neigh = AnsweredNeighbours(family, ifindex, owner_mac) if neighbours else None
        self.fdb = AnsweredFdb(ifindex, mac_ip) if fdb else None
        self.limiter = limiter or TokenBucket(RATE, BURST)
        self.misses: Counter[str] = Counter()  # "l3 answered", "l2 unknown", "l3 limited"...
        self.last_unknown: str | None = None
        self._unknown_logged = 0.0
        self._recheck: set[bytes] = set()  # peer MACs whose entries must be looked at again

    def rebind(self, ifindex: int) -> None:
        """Our device was replaced: nothing answered on the old one counts."""
        self.ifindex = ifindex
        for t in self.tables:
            t.rebind(ifindex)

    @property
    def tables(self) -> tuple[AnsweredFdb | AnsweredNeighbours, ...]:
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
        if not self._answer("l3", self.neigh, dst, mac):
            return False
        # with the FDB on demand too, its entry comes with the answer: the kernel would
        # otherwise drop the first packet on an L2 miss and ask again
        if self.fdb is not None and not self.fdb.holds(mac):
            self._l2(mac)
        return True

    def _l2(self, mac: bytes) -> bool:
        if self.fdb is None:
            return False
        ip = self.mac_ip(mac)
        if ip is None:
            return self._unknown("l2", mac)
        return self._answer("l2", self.fdb, mac, ip)

    def _answer(self, kind: str, table: Answers, key: bytes, value: bytes) -> bool:
        if table.is_dirty(key) and table.desired(key) == value:
            return True  # already on its way
        if not self.limiter.take():
            self.misses[f"{kind} limited"] += 1  # the kernel asks again (app_solicit probes)
            return False
        self.misses[f"{kind} answered"] += 1
        # a miss means the kernel cannot use what it has: write even if the cache says it's there
        table.rewrite(key, value)
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

    def status(self) -> OnDemandStatus:
        return OnDemandStatus({t.name: t.kernel_size for t in self.tables},
                              dict(sorted(self.misses.items())), self.last_unknown)

    # -- peers ----------

    def peer_changed(self, mac: bytes) -> None:
        """A peer with this VTEP MAC went, came or changed: look at its entries again."""
        self._recheck.add(mac)

    def recheck(self) -> None:
        """Entries (and answers on their way) through the MACs of changed peers: rewritten to
        their owner now, or removed if no node owns them. Once per pass, not per event."""
        if not self._recheck:
            return
        macs, self._recheck = self._recheck, set()
        if self.neigh is not None:
            self.neigh.recheck(lambda k, v: v in macs)
        if self.fdb is not None:
            self.fdb.recheck(lambda k, v: k in macs)
