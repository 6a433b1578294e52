"""The store seam: what the agent needs from wherever the cluster's state lives. etcd
(store/etcdstore.py) is one; anything that can hold a network config, a lease per node and
a watchable list of everyone's leases can be another, with the rest of the agent unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from vxnet.store.config import NetworkConfig
from vxnet.store.lease import Lease, SubnetKey
from vxnet.store.manager import AttrsFor, LeaseLost, NodeInfo
from vxnet.store.watcher import LeaseEvent, Snapshot


@dataclass(frozen=True, slots=True)
class StoreStatus:
    endpoint: str  # where it is talking to now
    node_id: int | None
    reconnects: int  # connections dropped and re-made
    watch_restarts: int  # watches resumed or re-listed
    renewals: int  # lease refreshes
    losses: int  # leases lost and re-acquired
    takeovers: int  # foreign writes to our lease, each put back


class Store(Protocol):
    async def config(self) -> NetworkConfig:
        """The cluster's network config (ConfigError if missing or invalid)."""
        ...

    async def acquire(self, cfg: NetworkConfig, node: NodeInfo, attrs_for: AttrsFor,
                      prefer: SubnetKey | None) -> Lease:
        """This node's lease: the one it has, else `prefer` if free, else any free subnet."""
        ...

    @property
    def lease(self) -> Lease:
        """This node's lease as the store holds it now (after acquire())."""
        ...

    async def keep(self, cfg: NetworkConfig, on_lost: Callable[[LeaseLost], Awaitable[None]]
                   ) -> None:
        """Keep the lease alive and ours, forever: refreshed, a foreign write put back, a lost
        one re-acquired (and reported)."""
        ...

    def check_soon(self) -> None:
        """Our lease's key changed in the store: verify it now."""
        ...

    async def move(self, node: NodeInfo, attrs_for: AttrsFor) -> None:
        """The node's addresses changed: publish them in our lease."""
        ...

    def take_snapshot(self) -> Snapshot:
        """Everyone's leases at the revision acquire() decided on, handed over once."""
        ...

    def watch(self) -> AsyncIterator[list[LeaseEvent]]:
        """Changes since the snapshot, in batches, resumed after any fault (re-listed when
        history is gone)."""
        ...

    @property
    def leases(self) -> Mapping[str, Lease]:
        """Everyone's leases as the watch last saw them."""
        ...

    async def reconnect(self) -> None:
        """Our connections left from an address we no longer have: make new ones."""
        ...

    async def close(self) -> None: ...

    def status(self) -> StoreStatus: ...
