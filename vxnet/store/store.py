"""The store seam: what the agent needs from wherever the cluster's state lives, and the
nouns both sides use. etcd (store/etcdstore.py) is one store, the Kubernetes API
(store/kubestore.py) another; neither module is imported unless its mode is in use."""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from vxnet.errors import LeaseDecodeError, VxnetError
from vxnet.store.config import NetworkConfig
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


def check_node_name(name: str) -> str:
    if not _NAME.match(name):
        raise VxnetError(f"--node-name: {name!r} is not a valid node name "
                         "(letters, digits, '.', '_', '-'; at most 253)")
    return name


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    public_ip: IPv4Address | None
    public_ipv6: IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """Reported (never raised) when our lease vanished and a new one replaced it."""

    old: Lease
    new: Lease
    reason: str


AttrsFor = Callable[[SubnetKey], LeaseAttrs]


class EventKind(enum.Enum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"  # carries no lease: the key is all there is to know
    INVALID = "invalid"  # a key whose value could not be decoded: skip it, report it


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    kind: EventKind
    key: str
    lease: Lease | None
    revision: int
    error: LeaseDecodeError | None = None


@dataclass(slots=True)
class Snapshot:
    leases: dict[str, Lease]
    invalid: dict[str, LeaseDecodeError]
    revision: int
    # every key that names a subnet, valid value or not (all of them are taken), and when
    # each was created (the older of two claims to one subnet wins)
    keys: dict[str, SubnetKey] = field(default_factory=dict)
    create_revisions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreStatus:
    endpoint: str  # where it is talking to now
    node_id: int | None
    reconnects: int  # connections dropped and re-made
    watch_restarts: int  # watches resumed or re-listed
    renewals: int  # lease refreshes
    losses: int  # leases lost and re-acquired
    takeovers: int  # foreign writes to our lease, each put back
    watching: bool  # a watch of everyone's leases is open and answering now


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

    async def ready(self) -> None:
        """This node's network is up (the first sync is in the kernel): say so where the
        store has a place for it (a Node's NetworkUnavailable condition), soon and without
        waiting for the store."""
        ...

    async def move(self, node: NodeInfo, attrs_for: AttrsFor) -> None:
        """The node's addresses changed: publish them in our lease."""
        ...

    def listing(self) -> AsyncIterator[Snapshot]:
        """Everyone's leases at one revision, the one watch() continues from, after acquire():
        in pages as they come, at least one (acquire()'s own listing, if it made one, cut into
        pages); the first sync programs each page while the store reads the next. Once,
        unless it raised StoreUnavailable or RevisionCompacted: then it may be read again."""
        ...

    def watch(self) -> AsyncIterator[list[LeaseEvent]]:
        """Changes since the snapshot, in batches, resumed after any fault (re-listed when
        history is gone)."""
        ...

    async def reconnect(self) -> None:
        """Our connections left from an address we no longer have: make new ones."""
        ...

    async def close(self) -> None: ...

    def status(self) -> StoreStatus: ...
