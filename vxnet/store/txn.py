"""etcd transactions: the compares and operations vxnet uses, as etcd's JSON gateway takes them.

A compare or an operation is the JSON object of etcd's Compare / RequestOp message, built once
here so no caller spells etcd's field names. `Etcd.txn` sends them.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any

Json = dict[str, Any]
Compare = Json  # etcdserverpb.Compare
Op = Json  # etcdserverpb.RequestOp


def _b64(raw: bytes) -> str:
    return b64encode(raw).decode()


def mod_is(key: bytes, revision: int) -> Compare:
    """The key was last written at `revision` (0: it does not exist)."""
    return {"target": "MOD", "key": _b64(key), "mod_revision": revision}


def version_is(key: bytes, version: int) -> Compare:
    """The key has been written `version` times since created (0: it does not exist)."""
    return {"target": "VERSION", "key": _b64(key), "version": version}


def created_is(key: bytes, revision: int, range_end: bytes | None = None) -> Compare:
    """The key -- or with range_end, every key in [key, range_end) -- was created at
    `revision` (0: none exists)."""
    compare = {"target": "CREATE", "key": _b64(key), "create_revision": revision}
    if range_end is not None:
        compare["range_end"] = _b64(range_end)
    return compare


def put(key: bytes, value: bytes, lease: int = 0) -> Op:
    body: Json = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = lease
    return {"request_put": body}


def get(key: bytes) -> Op:
    return {"request_range": {"key": _b64(key)}}


def delete(key: bytes) -> Op:
    return {"request_delete_range": {"key": _b64(key)}}
