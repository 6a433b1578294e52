"""The store in etcd, flannel's layout: `<prefix>/config`, a lease per node under
`<prefix>/subnets/`, vxnet's node IDs under `<prefix>/vxnet/`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from vxnet.store.allocator import node_subnet
from vxnet.store.config import NetworkConfig
from vxnet.store.etcd import PAGE, Etcd
from vxnet.store.lease import Lease, SubnetKey
from vxnet.store.manager import LeaseManager, read_config
from vxnet.store.nodeid import node_id
from vxnet.store.paths import Paths
from vxnet.store.store import AttrsFor, LeaseEvent, LeaseLost, NodeInfo, Snapshot, StoreStatus
from vxnet.store.watcher import LeaseWatcher


class EtcdStore:
    def __init__(self, etcd: Etcd, paths: Paths, *, ttl: int, renew_margin: int) -> None:
        self.etcd, self.paths = etcd, paths
        self.ttl, self.renew_margin = ttl, renew_margin
        self.node_id: int | None = None  # once acquire() has allocated it
        self._mgr: LeaseManager | None = None
        self._watcher = LeaseWatcher(etcd, paths)

    async def config(self) -> NetworkConfig:
        return await read_config(self.etcd, self.paths)

    async def acquire(self, cfg: NetworkConfig, node: NodeInfo, attrs_for: AttrsFor,
                      prefer: SubnetKey | None) -> Lease:
        if self.node_id is None:
            self.node_id = await node_id(self.etcd, self.paths, node.name)
        fixed = None
        if cfg.subnet_allocation == "node-id":  # the subnet follows from the node ID alone
            fixed = SubnetKey(node_subnet(cfg.ipv4, self.node_id) if cfg.ipv4 else None,
                              node_subnet(cfg.ipv6, self.node_id) if cfg.ipv6 else None)
        if self._mgr is None:
            self._mgr = LeaseManager(self.etcd, self.paths, node, attrs_for, ttl=self.ttl,
                                     renew_margin=self.renew_margin, fixed=fixed)
        return await self._mgr.acquire(cfg, prefer)

    @property
    def _manager(self) -> LeaseManager:
        if self._mgr is None:
            raise RuntimeError("the store was asked about our lease before acquire()")
        return self._mgr

    @property
    def lease(self) -> Lease:
        lease = self._manager.lease
        if lease is None:
            raise RuntimeError("the store holds no lease for us (released)")
        return lease

    async def keep(self, cfg: NetworkConfig, on_lost: Callable[[LeaseLost], Awaitable[None]]
                   ) -> None:
        await self._manager.keepalive(cfg, on_lost)

    def check_soon(self) -> None:
        self._manager.check_soon()

    async def ready(self) -> None:
        """etcd has no place for it: a lease is enough."""

    async def move(self, node: NodeInfo, attrs_for: AttrsFor) -> None:
        await self._manager.move(node, attrs_for)

    async def listing(self) -> AsyncIterator[Snapshot]:
        # the watch resumes from the listing's revision, so nothing after it is missed (our
        # own write included, and skipped as ours)
        snap = self._manager.take_snapshot()
        if snap is not None:  # the acquire's own, a page at a time: each lease is let go
            self._watcher.adopt(snap)  # once its page is programmed
            leases, invalid, revision = snap.leases, snap.invalid, snap.revision
            keys = list(leases)
            del snap
            for at in range(0, max(len(keys), 1), PAGE):
                yield Snapshot({k: leases.pop(k) for k in keys[at:at + PAGE]},
                               invalid if not at else {}, revision)
            return
        async for page in self._watcher.pages():  # the keepalive sweeps, once we are ready
            yield page

    def watch(self) -> AsyncIterator[list[LeaseEvent]]:
        return self._watcher.batches()

    async def reconnect(self) -> None:
        await self.etcd.reconnect()

    async def close(self) -> None:
        await self.etcd.close()

    def status(self) -> StoreStatus:
        m, w = self._mgr, self._watcher
        return StoreStatus(str(self.etcd.endpoint), self.node_id, self.etcd.reconnects,
                           w.rewatches + w.relists, m.renewals if m else 0,
                           m.losses if m else 0, m.takeovers if m else 0, self.etcd.watching)
