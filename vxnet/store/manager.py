"""This node's subnet lease: acquire (reuse, prefer, or pick), keep alive, recover from loss.

Races never end the process: a lost create-if-absent transaction just means "pick again".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import overload

from vxnet.backoff import Backoff
from vxnet.errors import (
    ConfigError,
    LeaseDecodeError,
    StoreUnavailable,
    SubnetTaken,
    VxnetError,
)
from vxnet.ip import NetworkT
from vxnet.store import txn
from vxnet.store.allocator import choose, taken_in_pool
from vxnet.store.config import NetworkConfig, Pool, parse_config
from vxnet.store.etcd import Etcd, prefix_end
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey, decode_lease, decode_value
from vxnet.store.paths import Paths
from vxnet.store.store import AttrsFor, LeaseLost, NodeInfo, Snapshot
from vxnet.store.watcher import list_leases

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600  # flannel's subnet lease TTL
DEFAULT_RENEW_MARGIN = 3600


async def read_config(etcd: Etcd, paths: Paths) -> NetworkConfig:
    kv = await etcd.get(paths.config)
    if kv is None:
        raise ConfigError("config", f"no network config at {paths.config.decode()} in etcd")
    return parse_config(kv.value)


@dataclass(slots=True)
class _Listing:
    snap: Snapshot
    owners: dict[str, str]


class LeaseManager:
    def __init__(self, etcd: Etcd, paths: Paths, node: NodeInfo, attrs_for: AttrsFor, *,
                 ttl: int = DEFAULT_TTL, renew_margin: int = DEFAULT_RENEW_MARGIN,
                 rng: random.Random | None = None, fixed: SubnetKey | None = None) -> None:
        """fixed: the only subnet this node may hold (SubnetAllocation node-id)."""
        if ttl < 3:
            raise VxnetError(f"lease TTL {ttl}s is too short (at least 3 s)")
        self.etcd, self.paths, self.node, self.attrs_for = etcd, paths, node, attrs_for
        self.fixed = fixed
        self.ttl, self.renew_margin = ttl, renew_margin
        self.rng = rng or random.SystemRandom()
        self.lease: Lease | None = None
        self._snapshot: Snapshot | None = None  # the listing the last acquire() decided on
        self._unlisted = False  # acquire() read only our own lease: listing and sweep to come
        self.renewals = 0
        self.losses = 0
        self.takeovers = 0  # foreign writes to our key, each put back
        self._check = asyncio.Event()

    # -- acquisition ----------

    async def acquire(self, cfg: NetworkConfig, prefer: SubnetKey | None = None,
                      attempts: int = 100) -> Lease:
        """Our existing lease if there is one, else `prefer` if free, else a random free subnet."""
        if prefer is not None and self.lease is None and self.fixed is None:
            lease = await self._claim_preferred(cfg, prefer)
            if lease is not None:
                self.lease, self._snapshot, self._unlisted = lease, None, True
                self._check.clear()
                return lease
        for _ in range(attempts):
            listing = await self._list()
            mine, stale = self._find_mine(cfg, listing)
            if self.fixed is not None:  # only the subnet the node ID names is ours to hold;
                ours = [x for x in (mine, *stale) if x is not None]  # others of ours go
                mine = next((x for x in ours if x.key == self.fixed), None)
                stale = [x for x in ours if x is not mine and not x.reserved
                         and listing.owners.get(str(x.key)) == self.node.name]
            lease = await (self._reuse(mine, listing) if mine
                           else self._create(cfg, listing, prefer))
            if lease is None:  # lost a race: look again
                await asyncio.sleep(self.rng.uniform(0, 0.05))
                continue
            for old in stale:
                await self._delete(old)
            self.lease, self._unlisted = lease, False
            self._check.clear()
            return lease
        raise VxnetError(f"could not acquire a subnet lease after {attempts} attempts")

    async def _list(self) -> _Listing:
        snap = await list_leases(self.etcd, self.paths)
        owners = await self._owners()
        self._snapshot = snap
        return _Listing(snap, owners)

    async def _owners(self) -> dict[str, str]:
        """Subnet key -> the node name its owner record holds, for every record."""
        owners: dict[str, str] = {}
        cut = len(self.paths.owners)
        async for owner_kvs, _ in self.etcd.prefix_pages(self.paths.owners):
            owners.update((kv.key[cut:].decode(errors="replace"),
                           kv.value.decode(errors="replace")) for kv in owner_kvs)
        return owners

    async def _claim_preferred(self, cfg: NetworkConfig, prefer: SubnetKey) -> Lease | None:
        """At start-up: the lease subnet.env names, if our name owns it and it fits, reused
        after reading just its two keys -- so the first sync need not wait for everyone's
        leases, which the agent then lists page by page (take_snapshot() says None) and
        keepalive() sweeps (sweep()) what a full acquire() would have removed, once the agent
        is ready: listing every owner record (a page per 1 000 nodes) is not worth waiting
        for. None: look at everything."""
        key = str(prefer)
        _, (kv, owner) = await self.etcd.txn([], [txn.get(self.paths.subnet(key)),
                                                  txn.get(self.paths.owner(key))])
        if kv is None or owner is None or owner.value != self.node.name.encode():
            return None
        try:
            mine = decode_lease(key, kv.value, kv.lease, kv.mod_revision)
        except LeaseDecodeError:
            return None
        if not self._fits(cfg, mine.key):
            return None
        alone = _Listing(Snapshot({key: mine}, {}, kv.mod_revision), {key: self.node.name})
        return await self._reuse(mine, alone)

    def take_snapshot(self) -> Snapshot | None:
        """The listing the last acquire() decided on, handed over once: kept, its indexes of
        every lease would double the store side's memory (3.5 MiB at 20 000 peers). None:
        acquire() read only our own lease; the caller lists everyone's, then calls sweep()."""
        snap, self._snapshot = self._snapshot, None
        if snap is None and not self._unlisted:
            raise RuntimeError("take_snapshot() without a new acquire()")
        return snap

    async def sweep(self) -> None:
        """After an acquire() that read only our own lease: the other leases our name owns go,
        as a full acquire() would have removed them (the node had another subnet before, a
        reservation aside). Only while key and owner record are still one lease's, ours."""
        ours = str(self._held("sweep()").key)
        name = self.node.name.encode()
        stale = [key for key, who in (await self._owners()).items()
                 if who == self.node.name and key != ours]
        for key in stale:
            subnet, owner = self.paths.subnet(key), self.paths.owner(key)
            _, (kv, who) = await self.etcd.txn([], [txn.get(subnet), txn.get(owner)])
            if kv is None or who is None or who.value != name or not kv.lease \
                    or who.lease != kv.lease:  # gone, someone else's, or a reservation
                continue
            log.info("removing lease %s: this node's before, not now", key)
            await self.etcd.txn([txn.mod_is(subnet, kv.mod_revision),
                                 txn.mod_is(owner, who.mod_revision)],
                                [txn.delete(subnet), txn.delete(owner)])
        self._unlisted = False

    def _fits(self, cfg: NetworkConfig, key: SubnetKey) -> bool:
        def ok(pool: Pool[NetworkT] | None, net: NetworkT | None) -> bool:
            if pool is None or net is None:
                return pool is None and net is None
            return pool.contains(net) and net.prefixlen == pool.subnet_len

        return ok(cfg.ipv4, key.subnet) and ok(cfg.ipv6, key.subnet6)

    def _find_mine(self, cfg: NetworkConfig, listing: _Listing) -> tuple[Lease | None, list[Lease]]:
        """Leases that are ours by node name, or by public IP where no other node owns them."""
        node = self.node
        ours: list[Lease] = []
        for lease in listing.snap.leases.values():
            owner = listing.owners.get(str(lease.key))
            by_ip = (lease.attrs.public_ip == node.public_ip if cfg.ipv4
                     else lease.attrs.public_ipv6 == node.public_ipv6)
            if owner == node.name or (owner is None and by_ip):
                ours.append(lease)
        fitting = [lease for lease in ours if self._fits(cfg, lease.key)]
        # prefer the lease our name owns over one matched by IP only
        fitting.sort(key=lambda lease: listing.owners.get(str(lease.key)) != node.name)
        mine = fitting[0] if fitting else None
        stale = [lease for lease in ours if lease is not mine and not lease.reserved
                 and listing.owners.get(str(lease.key)) == node.name]
        return mine, stale

    async def _reuse(self, mine: Lease, listing: _Listing) -> Lease | None:
        attrs = self.attrs_for(mine.key)
        key = str(mine.key)
        lease_id = 0
        if not mine.reserved:
            # at start-up the key's own etcd lease (our previous run's) is adopted; once we hold
            # one, only ours: a lease some other writer attached would let them expire our key
            held = self.lease.etcd_lease if self.lease and self.lease.key == mine.key else 0
            candidate = held or mine.etcd_lease
            lease_id = candidate if await self._alive(candidate) else 0
            lease_id = lease_id or await self.etcd.grant(self.ttl)
        if (lease_id == mine.etcd_lease and attrs == mine.attrs
                and listing.owners.get(key) == self.node.name):
            log.info("reusing lease %s untouched", key)
            return mine
        revision = await self._write(
            [txn.mod_is(self.paths.subnet(key), mine.mod_revision)], key, attrs, lease_id)
        if revision is None:
            if lease_id and lease_id != mine.etcd_lease:
                await self.etcd.revoke(lease_id)
            return None
        log.info("reusing lease %s (%s)", key, "reservation" if mine.reserved else "renewed")
        return Lease(mine.key, attrs, lease_id, revision)

    async def _alive(self, lease_id: int) -> bool:
        try:
            return await self.etcd.refresh(lease_id) > 0
        except StoreUnavailable:
            raise
        except Exception:  # etcd answers "lease not found" as an error status
            return False

    async def _create(self, cfg: NetworkConfig, listing: _Listing,
                      prefer: SubnetKey | None) -> Lease | None:
        if self.fixed is not None:
            return await self._create_fixed(cfg, listing, self.fixed)
        sub4 = sub6 = None
        if cfg.ipv4:
            taken4 = taken_in_pool(cfg.ipv4, (k.subnet for k in listing.snap.keys.values()
                                              if k.subnet))
            sub4 = choose(cfg.ipv4, taken4, [prefer.subnet if prefer else None], self.rng)
        if cfg.ipv6:
            taken6 = taken_in_pool(cfg.ipv6, (k.subnet6 for k in listing.snap.keys.values()
                                              if k.subnet6))
            sub6 = choose(cfg.ipv6, taken6, [prefer.subnet6 if prefer else None], self.rng)
        key = SubnetKey(sub4, sub6)
        name = str(key)
        attrs = self.attrs_for(key)
        lease_id = await self.etcd.grant(self.ttl)
        # Create-if-absent. For IPv4 the compare covers every key starting with our IPv4 half,
        # so a dual-stack key holding the same IPv4 subnet also counts as taken.
        first = self.paths.subnet(str(SubnetKey(sub4)) if sub4 else name)
        compare = [txn.created_is(first, 0, prefix_end(first) if sub4 else None)]
        revision = await self._write(compare, name, attrs, lease_id)
        if revision is None:
            await self.etcd.revoke(lease_id)
            return None
        lease = Lease(key, attrs, lease_id, revision)
        if sub6 is not None and not await self._won_ipv6(lease, revision):
            await self._delete(lease)
            await self.etcd.revoke(lease_id)
            return None
        log.info("acquired new lease %s", name)
        return lease

    async def _create_fixed(self, cfg: NetworkConfig, listing: _Listing, key: SubnetKey
                            ) -> Lease | None:
        """Create exactly `key`, or say clearly whose it is: never someone else's subnet."""
        for name, k in listing.snap.keys.items():
            clash = (k.subnet is not None and key.subnet is not None
                     and k.subnet.overlaps(key.subnet)) or (
                k.subnet6 is not None and key.subnet6 is not None
                and k.subnet6.overlaps(key.subnet6))
            if clash:
                held = listing.snap.leases.get(name)
                who = listing.owners.get(name) or "no vxnet node (flanneld, or a reservation?)"
                ip = held and (held.attrs.public_ip or held.attrs.public_ipv6)
                raise SubnetTaken(f"subnet {key} is this node's under SubnetAllocation node-id, "
                                  f"but lease {name} holds it (node: {who}, PublicIP {ip}); "
                                  "not taking it: free it, or give this node another name")
        name = str(key)
        lease_id = await self.etcd.grant(self.ttl)
        compare = [txn.version_is(self.paths.subnet(name), 0)]
        revision = await self._write(compare, name, self.attrs_for(key), lease_id)
        if revision is None:  # someone got there first: the next look names them
            await self.etcd.revoke(lease_id)
            return None
        log.info("acquired lease %s (SubnetAllocation node-id)", name)
        return Lease(key, self.attrs_for(key), lease_id, revision)

    @overload
    async def _write(self, compare: None, key: str, attrs: LeaseAttrs, lease_id: int) -> int: ...

    @overload
    async def _write(self, compare: list[txn.Compare], key: str, attrs: LeaseAttrs, lease_id: int
                     ) -> int | None: ...

    async def _write(self, compare: list[txn.Compare] | None, key: str, attrs: LeaseAttrs,
                     lease_id: int) -> int | None:
        """Put the subnet key and its owner record if `compare` holds; the key's new revision,
        None if it did not hold. compare=None: unconditionally, which etcd never refuses (a
        transaction without compares takes its success branch), hence always a revision."""
        ok, got = await self.etcd.txn(compare or [], [
            txn.put(self.paths.subnet(key), attrs.encode(), lease_id),
            txn.put(self.paths.owner(key), self.node.name.encode(), lease_id),
            txn.get(self.paths.subnet(key)),
        ])
        if not ok or got[0] is None:  # the failure branch is empty: nothing got
            return None
        return got[0].mod_revision

    async def _won_ipv6(self, lease: Lease, revision: int) -> bool:
        """An IPv6 half can't be prefix-compared inside a dual-stack key: check after writing,
        and let the older key win."""
        listing = await self._list()
        ours = str(lease.key)
        return not any(
            k.subnet6 == lease.key.subnet6 and name != ours
            and listing.snap.create_revisions[name] < revision
            for name, k in listing.snap.keys.items()
        )

    async def _delete(self, lease: Lease) -> None:
        key = str(lease.key)
        await self.etcd.txn(
            [txn.mod_is(self.paths.subnet(key), lease.mod_revision)],
            [txn.delete(self.paths.subnet(key)), txn.delete(self.paths.owner(key))],
        )

    def _held(self, caller: str) -> Lease:
        """The lease move() and keepalive() work on: one acquire() must have returned."""
        if self.lease is None:
            raise RuntimeError(f"{caller} before acquire()")
        return self.lease

    async def release(self) -> None:
        """Give the subnet back (a node leaving for good). A normal stop keeps the lease."""
        if self.lease is not None and not self.lease.reserved:
            await self.etcd.revoke(self.lease.etcd_lease)
        self.lease = None

    async def move(self, node: NodeInfo, attrs_for: AttrsFor) -> None:
        """This node's addresses changed: publish them in our lease -- same key, same etcd
        lease -- unless etcd already has exactly that (so a retry after a failure writes)."""
        self.node, self.attrs_for = node, attrs_for
        lease = self._held("move()")
        attrs = attrs_for(lease.key)
        key = str(lease.key)
        kv = await self.etcd.get(self.paths.subnet(key))
        if kv is not None and kv.value == attrs.encode() and kv.lease == lease.etcd_lease:
            self.lease = Lease(lease.key, attrs, lease.etcd_lease, kv.mod_revision)
            return
        # ours from now on: the watch event of this write compares equal, not as a takeover
        self.lease = Lease(lease.key, attrs, lease.etcd_lease, lease.mod_revision)
        revision = await self._write(None, key, attrs, lease.etcd_lease)
        self.lease = Lease(lease.key, attrs, lease.etcd_lease, revision)
        log.warning("lease %s now says %s", key,
                    ", ".join(str(a) for a in (attrs.public_ip, attrs.public_ipv6) if a))

    # -- keeping it ----------

    def check_soon(self) -> None:
        """Tell the keepalive loop to verify the lease now (e.g. the watch saw our key go)."""
        self._check.set()

    def renew_interval(self) -> float:
        return max(1.0, min(self.ttl / 3, self.ttl - self.renew_margin))

    async def keepalive(self, cfg: NetworkConfig,
                        on_lost: Callable[[LeaseLost], Awaitable[None]] | None = None) -> None:
        """Refresh the lease every renew_interval(), and whenever check_soon() asks: a key
        another writer changed is put back; a lease that is gone is re-acquired, preferring the
        same subnet, and reported. First, after an acquire() that read only our own lease,
        sweep(). Store outages are retried with backoff, never raised."""
        backoff = Backoff(0.5, 10)
        delay = 0.0 if self._unlisted else self.renew_interval()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check.wait(), delay)
            self._check.clear()
            lease = self._held("keepalive()")
            try:
                if self._unlisted:  # after a quick start, once ready: not worth a wait for
                    await self.sweep()
                reason = await self._verify(lease)
                if reason is not None:
                    self.losses += 1
                    log.warning("lease %s lost (%s); re-acquiring", lease.key, reason)
                    new = await self.acquire(cfg, prefer=lease.key)
                    self._snapshot = None  # the watch follows on its own; nobody adopts it
                    if on_lost is not None:
                        await on_lost(LeaseLost(lease, new, reason))
                backoff.reset()
                delay = self.renew_interval()
            except StoreUnavailable as e:
                delay = backoff.next_delay()
                log.warning("lease keepalive: %s; retrying in %.1fs", e, delay)

    async def _verify(self, lease: Lease) -> str | None:
        """None while the lease is held (refreshing it, and putting back our value under our
        etcd lease if someone else wrote the key); else why it is gone."""
        if not lease.reserved:
            if not await self._alive(lease.etcd_lease):
                return "etcd lease expired or revoked"
            self.renewals += 1
        for _ in range(10):  # each round loses only to another concurrent write
            key = str(lease.key)
            kv = await self.etcd.get(self.paths.subnet(key))
            if kv is None and lease.reserved:
                return "reservation deleted"  # the operator freed it: take a leased subnet
            if kv is None:
                found, compare = "deleted", txn.version_is(self.paths.subnet(key), 0)
            else:
                foreign = _foreign(key, kv.value, kv.lease, lease)
                if foreign is None:
                    return None
                found, compare = foreign, txn.mod_is(self.paths.subnet(key), kv.mod_revision)
            self.takeovers += 1
            log.warning("lease %s: another writer changed our key (%s); putting back our value "
                        "under our etcd lease %s", key, found, lease.etcd_lease or "(reserved)")
            revision = await self._write([compare], key, lease.attrs, lease.etcd_lease)
            if revision is not None:
                lease = self.lease = Lease(lease.key, lease.attrs, lease.etcd_lease, revision)
                return None
        self.check_soon()  # a writer fighting us: look again at once rather than give up
        return None


def _foreign(key: str, raw: bytes, etcd_lease: int, ours: Lease) -> str | None:
    """What another writer left on our key, or None if it is still exactly ours."""
    try:
        attrs = decode_value(key, raw)
    except LeaseDecodeError as e:
        return f"an undecodable value: {e.reason}"
    if attrs == ours.attrs and etcd_lease == ours.etcd_lease:
        return None
    mac = attrs.vtep_mac or attrs.vtep_mac6
    return (f"PublicIP {attrs.public_ip or attrs.public_ipv6}, VtepMAC {mac}, "
            f"etcd lease {etcd_lease or 'none'}")
