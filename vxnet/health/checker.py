"""Is the overlay to each peer working, and if not, why (Cilium's cilium-health, for vxnet).

Every peer is probed about once per interval, the probes spread evenly over it: an ICMP echo
through the overlay to the peer's VXLAN address (encapsulation, our FDB/neighbour/route entries
and both nodes' VXLAN allow-lists), one on the underlay to its public IP, and every few rounds a
full-size don't-fragment echo through the overlay (MTU black holes). Each check allows one retry,
so a single lost packet is not an outage. The diagnosis comes from the three results together."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from vxnet.health.pinger import Pinger, Reply
from vxnet.ip import IPAddress

log = logging.getLogger(__name__)

MTU_EVERY = 5  # full-size probes every this many rounds of a peer (and on its first)
TICK_MIN = 0.05  # seconds
CONCURRENCY = 1024  # checks in flight at once (a dead peer's holds its slot for ~4 timeouts)
LOG_PER_MINUTE = 20  # peer state changes logged one by one; past that, one summary a minute


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe for one peer in one address family."""

    key: str  # "ipv4 <lease key>"
    vxlan_ip: IPAddress  # its VXLAN device's address (its subnet's network address)
    public_ip: IPAddress  # where its lease says it is
    mtu: int  # our overlay MTU: a full-size probe is this big
    port: int  # the VXLAN port, for the diagnosis


@dataclass(frozen=True, slots=True)
class TargetView:
    """What to probe, as asked for once a second: every target by key, and the keys whose
    target came, went or changed since the last view (None: any may have). With thousands of
    peers under churn, a view that had to be compared in full every second held the event loop
    for milliseconds (~5 ms at 5 000 peers)."""

    targets: Mapping[str, Target]
    changed: Collection[str] | None
    # sources our own VXLAN allow-list dropped lately: a target's verdict, not part of it, so
    # that one source refused or forgiven remakes no target
    refused: AbstractSet[IPAddress] = frozenset()


@dataclass(slots=True)
class PeerHealth:
    target: Target
    state: str = "unknown"  # healthy, unhealthy, unknown (not probed yet)
    diagnosis: str | None = None
    cause: str | None = None  # one of CAUSES while unhealthy
    since: float = field(default_factory=time.time)  # when the state last changed
    rtt: float | None = None  # overlay round trip of the last check
    underlay_rtt: float | None = None
    mtu_ok: bool | None = None
    rounds: int = 0


class Observer(Protocol):
    def on_probe(self, path: str, rtt: float | None) -> None: ...


# why a peer is unhealthy, in words a metric label can carry (the text says the rest)
CAUSES = ("wrong_source", "underlay_unreachable", "allowlist_refused", "overlay_blocked", "mtu")


def diagnose(t: Target, overlay: Reply | None, underlay: Reply | None, mtu_ok: bool | None,
             refused_here: bool = False) -> tuple[str, str | None, str | None]:
    """(state, cause, why) from one check's results; the cause is one of CAUSES.
    refused_here: our own VXLAN allow-list dropped packets from the peer's public IP lately."""
    if underlay is not None and underlay.source != t.public_ip:
        return "unhealthy", "wrong_source", (
            f"answers from {underlay.source}, not from its lease's address {t.public_ip}: the "
            "lease is stale or the node is behind NAT")
    if overlay is None and underlay is None:
        return "unhealthy", "underlay_unreachable", (
            "underlay unreachable: the node is down or the network between the nodes is "
            "partitioned")
    if overlay is None and refused_here:
        return "unhealthy", "allowlist_refused", (
            "overlay blocked, underlay fine: this node's VXLAN allow-list drops the peer's "
            f"packets (from {t.public_ip}): its view of the leases is behind, see `vxnet status`")
    if overlay is None:
        return "unhealthy", "overlay_blocked", (
            f"overlay blocked, underlay fine: VXLAN (UDP {t.port}) is dropped between the nodes "
            "(a firewall, security group or hypervisor), or the peer's VXLAN allow-list does "
            "not know this node")
    if mtu_ok is False:
        return "unhealthy", "mtu", (
            f"MTU: small packets pass, full-size ones ({t.mtu} bytes inside the overlay) do not: "
            "a link on the underlay path has a smaller MTU than this node's")
    return "healthy", None, None


@dataclass(frozen=True, slots=True)
class HealthStatus:
    interval: float  # seconds in which every peer is probed once
    counts: dict[str, int]  # peers by verdict
    causes: dict[str, int]  # unhealthy peers by cause (every one of CAUSES, 0 included)
    sent: int  # echo requests sent
    peers: Mapping[str, PeerHealth]  # per peer (read only)


class HealthChecker:
    def __init__(self, targets: Callable[[], TargetView], interval: float,
                 observer: Observer | None = None,
                 pinger: Callable[[int], Pinger] = Pinger) -> None:
        """pinger: makes the echo sender for an address family (tests pass a fake)."""
        self.targets, self.interval, self.observer = targets, interval, observer
        self._new_pinger = pinger
        self.timeout = min(2.0, interval / 4)
        self.peers: dict[str, PeerHealth] = {}
        self._pingers: dict[int, Pinger] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: Counter[str] = Counter()  # checks that failed to run, by error
        self._busy: set[str] = set()  # peers whose check is still running
        self._refused: AbstractSet[IPAddress] = frozenset()  # as the last view said
        # a partition that takes thousands of peers away at once must not flood the log
        self._log_window, self._logged, self._unlogged = time.monotonic(), 0, 0

    def status(self) -> HealthStatus:
        causes = dict.fromkeys(CAUSES, 0)
        for p in self.peers.values():
            if p.state == "unhealthy" and p.cause is not None:
                causes[p.cause] += 1
        return HealthStatus(self.interval, dict(self.counts()), causes, self.sent, self.peers)

    def counts(self) -> Counter[str]:
        return Counter(p.state for p in self.peers.values())

    async def run(self) -> None:
        """Probe until cancelled: each tick takes the next slice of the peers, so a whole
        round takes one interval whatever their number."""
        queue: deque[str] = deque()
        owed, refreshed = 0.0, -1.0
        current: Mapping[str, Target] = {}
        try:
            while True:
                if time.monotonic() - refreshed >= 1.0:  # the targets, once a second at most
                    refreshed = time.monotonic()
                    view = self.targets()
                    current, self._refused = view.targets, view.refused
                    if view.changed is None:
                        for key in [k for k in self.peers if k not in current]:
                            del self.peers[key]
                    for key in current if view.changed is None else view.changed:
                        self._follow(key, current.get(key), queue)
                # several checks per tick when there are many peers: 20 ticks a second at most
                tick = max(TICK_MIN, min(1.0, self.interval / max(len(current), 1)))
                owed += len(current) * tick / self.interval
                while owed >= 1 and queue:
                    owed -= 1
                    key = queue.popleft()
                    if key in current:
                        queue.append(key)
                        if key not in self._busy:  # a slow check is not piled onto
                            self._spawn(self.peers[key])
                if not queue:
                    queue = deque(current)
                self._roll_log_window()  # the summary comes even when nothing changes after
                await asyncio.sleep(tick * random.uniform(0.9, 1.1))
        finally:
            for task in self._tasks:
                task.cancel()
            for p in self._pingers.values():
                p.close()
            self._pingers.clear()

    def _follow(self, key: str, t: Target | None, queue: deque[str]) -> None:
        """A target came, changed or went (None)."""
        p = self.peers.get(key)
        if t is None:
            self.peers.pop(key, None)  # its key leaves the queue when its turn comes
        elif p is None:
            self.peers[key] = PeerHealth(t)
            queue.append(key)
        else:
            p.target = t

    @property
    def sent(self) -> int:
        """Echo requests sent so far."""
        return sum(p.sent for p in self._pingers.values())

    def _spawn(self, peer: PeerHealth) -> None:
        self._busy.add(peer.target.key)
        task = asyncio.ensure_future(self._check(peer))
        task.add_done_callback(lambda _: self._busy.discard(peer.target.key))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # e.g. no raw sockets (CAP_NET_RAW): said once per kind of error, the agent carries on
        err = f"{type(task.exception()).__name__}: {task.exception()}"
        if not self.errors[err]:
            log.error("peer probes cannot run: %s", err)
        self.errors[err] += 1

    def _pinger(self, version: int) -> Pinger:
        if version not in self._pingers:
            self._pingers[version] = self._new_pinger(version)
        return self._pingers[version]

    async def _echo(self, path: str, dst: IPAddress, size: int = 64) -> Reply | None:
        """One try and, if it is lost, one more."""
        pinger = self._pinger(dst.version)
        for _ in range(2):
            reply = await pinger.echo(dst, size, self.timeout)
            if reply is not None:
                break
        if self.observer is not None:
            self.observer.on_probe(path, reply.rtt if reply else None)
        return reply

    def _log(self, level: int, msg: str, *args: object) -> None:
        self._roll_log_window()
        if self._logged < LOG_PER_MINUTE:
            self._logged += 1
            log.log(level, msg, *args)
        else:
            self._unlogged += 1

    def _roll_log_window(self) -> None:
        if time.monotonic() - self._log_window < 60:
            return
        if self._unlogged:
            log.warning("%d more peer state changes in the last minute were not logged one by "
                        "one; /v1/health and `vxnet status` show every peer", self._unlogged)
        self._log_window, self._logged, self._unlogged = time.monotonic(), 0, 0

    async def _check(self, peer: PeerHealth) -> None:
        async with self._slots:
            t = peer.target
            overlay, underlay = await asyncio.gather(self._echo("overlay", t.vxlan_ip),
                                                     self._echo("underlay", t.public_ip))
            if overlay is not None and (peer.rounds % MTU_EVERY == 0 or peer.mtu_ok is False):
                peer.mtu_ok = await self._echo("mtu", t.vxlan_ip, t.mtu) is not None
            peer.rounds += 1
        state, cause, why = diagnose(t, overlay, underlay, peer.mtu_ok if overlay else None,
                                     t.public_ip in self._refused)
        peer.rtt = overlay.rtt if overlay else None
        peer.underlay_rtt = underlay.rtt if underlay else None
        if (state, why) != (peer.state, peer.diagnosis):
            if state == "healthy":
                if peer.state != "unknown":
                    self._log(logging.INFO, "peer %s is reachable again", t.key)
            else:
                self._log(logging.WARNING, "peer %s: %s", t.key, why)
            peer.state, peer.diagnosis, peer.cause, peer.since = state, why, cause, time.time()
