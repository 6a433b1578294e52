"""An in-memory stand-in for vxnet.store.etcd.Etcd's listing and watch, with fail flags: a
script of what each watch call does (deliver batches, drop, compact, time out, reject auth)."""

from __future__ import annotations

from dataclasses import dataclass

from vxnet.errors import RevisionCompacted, StoreAuthError, StoreUnavailable


@dataclass
class KV:
    key: bytes
    value: bytes
    lease: int = 0
    mod_revision: int = 0
    create_revision: int = 0


@dataclass
class Ev:
    type: int  # as mvccpb.Event: 0 PUT, 1 DELETE
    kv: KV


class FakeEtcd:
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.kvs: dict[bytes, KV] = {}
        self.revision = 1
        self.history: list[Ev] = []
        self.script: list[str] = []  # per watch call: "deliver", "drop", "compact", "timeout",
        self.watch_starts: list[int] = []  # "auth"; a delivering call ends the test's batches

    def put(self, name: str, value: bytes | str) -> None:
        self.revision += 1
        key = self.prefix + name.encode()
        old = self.kvs.get(key)
        kv = KV(key, value if isinstance(value, bytes) else value.encode(), 0, self.revision,
                old.create_revision if old else self.revision)
        self.kvs[key] = kv
        self.history.append(Ev(0, kv))

    def delete(self, name: str) -> None:
        self.revision += 1
        key = self.prefix + name.encode()
        self.kvs.pop(key)
        self.history.append(Ev(1, KV(key, b"", 0, self.revision)))

    async def get_prefix(self, prefix: bytes):
        return [kv for k, kv in sorted(self.kvs.items()) if k.startswith(prefix)], self.revision

    async def prefix_pages(self, prefix: bytes):
        yield await self.get_prefix(prefix)

    async def watch_prefix(self, prefix: bytes, start_revision: int):
        self.watch_starts.append(start_revision)
        what = self.script.pop(0) if self.script else "deliver"
        if what == "timeout":
            raise StoreUnavailable("etcd: watch: no answer to a progress request")
        if what == "compact":
            raise RevisionCompacted("etcd: compacted", self.revision)
        if what == "auth":
            raise StoreAuthError("etcd: permission denied to user 'node'")
        pending = [e for e in self.history if e.kv.mod_revision >= start_revision]
        if what == "drop":  # one event gets through, then the stream breaks
            yield pending[:1]
            raise StoreUnavailable("etcd: watch: stream dropped")
        for e in pending:
            yield [e]
        raise StoreUnavailable("etcd: watch: end of script")
