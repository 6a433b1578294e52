"""Picking a free subnet from a pool: pure logic, no I/O, so it is tested exhaustively."""

from __future__ import annotations

import random
from collections.abc import Iterable

from vxnet.errors import ExhaustedError
from vxnet.ip import IPNetwork, NetworkT, nth_subnet, subnets_between
from vxnet.store.config import Pool

_ENUMERATE_LIMIT = 1 << 16  # pools up to this size are listed when sampling finds none free
_SAMPLES = 64  # random tries before that: a pool under ~93 % full rarely needs the list


def taken_in_pool(pool: Pool[NetworkT], subnets: Iterable[IPNetwork]) -> set[NetworkT]:
    """The pool-sized subnets that any existing subnet overlaps (whatever its length)."""
    taken: set[NetworkT] = set()
    family = type(pool.network)
    for s in subnets:
        if not isinstance(s, family) or not s.overlaps(pool.network):
            continue
        if s.prefixlen == pool.subnet_len:  # nearly always: the subnet itself (no new object)
            taken.add(s)
        elif s.prefixlen > pool.subnet_len:
            taken.add(s.supernet(new_prefix=pool.subnet_len))
        else:  # a shorter (older config) subnet covers several of ours
            parts = max(0, pool.subnet_len - s.prefixlen)
            if parts <= 16:
                taken.update(s.subnets(new_prefix=pool.subnet_len))
            else:
                lo = family((s.network_address, pool.subnet_len))
                taken.update(nth_subnet(lo, i) for i in range(_ENUMERATE_LIMIT))
    return taken


def choose(pool: Pool[NetworkT], taken: set[NetworkT], prefer: Iterable[NetworkT | None] = (),
           rng: random.Random | None = None) -> NetworkT:
    """The first preferred subnet that is in range and free, else a random free one."""
    for p in prefer:
        if p is not None and pool.in_range(p) and p not in taken:
            return p
    rng = rng or random.SystemRandom()
    size = pool.size
    # random subnets until a free one (uniform over the free ones): listing the range first
    # built a subnet object for each of its up to 65 536 subnets on every start
    for _ in range(_SAMPLES if size <= _ENUMERATE_LIMIT else 1000):
        s = nth_subnet(pool.subnet_min, rng.randrange(size))
        if s not in taken:
            return s
    if size <= _ENUMERATE_LIMIT:  # nearly full: the free ones, if any, by listing
        free = [s for s in subnets_between(pool.subnet_min, pool.subnet_max) if s not in taken]
        if free:
            return rng.choice(free)
    used = sum(1 for s in taken if pool.in_range(s))
    raise ExhaustedError(
        f"no free /{pool.subnet_len} subnet in {pool.network}: range "
        f"{pool.subnet_min.network_address}..{pool.subnet_max.network_address} holds {size}, "
        f"{used} taken; widen Network/SubnetMin/SubnetMax or remove stale leases"
    )


def node_subnet(pool: Pool[NetworkT], node_id: int) -> NetworkT:
    """The "node-id" policy: node n gets the n-th subnet of the range, counted from SubnetMin
    (node 1 gets SubnetMin itself)."""
    if not 1 <= node_id <= pool.size:
        raise ExhaustedError(
            f"node ID {node_id} has no subnet under SubnetAllocation node-id: "
            f"{pool.subnet_min.network_address}..{pool.subnet_max.network_address} holds "
            f"{pool.size} /{pool.subnet_len} subnets; widen the range")
    return nth_subnet(pool.subnet_min, node_id - 1)
