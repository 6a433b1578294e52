"""Small, stable integer IDs per node name (contiv-style), allocated create-if-absent.

Kept under `<prefix>/vxnet/` without an etcd lease: an ID survives restarts and lease loss.
"""

from __future__ import annotations

from vxnet.errors import VxnetError
from vxnet.store import txn
from vxnet.store.etcd import Etcd
from vxnet.store.paths import Paths
from vxnet.store.store import check_node_name


async def node_id(etcd: Etcd, paths: Paths, name: str, attempts: int = 100) -> int:
    """This node's ID: the one it had, else the lowest free one, claimed in one transaction."""
    check_node_name(name)
    for _ in range(attempts):
        existing = await etcd.get(paths.node(name))
        if existing is not None:
            try:
                return int(existing.value)
            except ValueError:
                raise VxnetError(f"{paths.node(name).decode()}: holds {existing.value[:40]!r}, "
                                 "not a node ID") from None
        kvs, _ = await etcd.get_prefix(paths.node_ids)
        used = {int(kv.key.rsplit(b"/", 1)[1]) for kv in kvs if kv.key.rsplit(b"/", 1)[1].isdigit()}
        n = next(i for i in range(1, len(used) + 2) if i not in used)
        ok, _ = await etcd.txn(
            [txn.created_is(paths.node(name), 0), txn.created_is(paths.node_id(n), 0)],
            [txn.put(paths.node(name), str(n).encode()), txn.put(paths.node_id(n), name.encode())],
        )
        if ok:
            return n
    raise VxnetError(f"could not allocate a node ID for {name!r} after {attempts} attempts")
