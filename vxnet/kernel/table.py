"""The one desired-vs-kernel mechanism, reused by every table (routes, neighbours, FDB, nexthops).

Modelled on Calico Felix's delta tracker: each table holds what we want, what we believe the
kernel holds (from dumps, our own writes and netlink notifications), and the keys where the two
may differ. A pass turns only those keys into requests (`replace` or `delete`, never a flush),
so an unchanged entry is never written and traffic through it never notices.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Request = tuple[int, int, bytes]
_ABSENT = object()


class Op(NamedTuple, Generic[K, V]):
    """One planned kernel write; `value` is the new value (set) or the kernel's (delete). A
    tuple: a pass makes one per entry written, and a frozen dataclass costs 3x as much to build."""

    table: DeltaTable[K, V]
    delete: bool
    key: K
    value: V

    def __str__(self) -> str:
        return f"{'delete' if self.delete else 'set'} {self.table.name} {self.table.show(self.key)}"


@dataclass(eq=False)
class DeltaTable(Generic[K, V]):
    name: str
    encode_set: Callable[[K, V], Request]
    encode_del: Callable[[K, V], Request]
    show: Callable[[K], str] = str
    desired: dict[K, V] = field(default_factory=dict)
    kernel: dict[K, V] = field(default_factory=dict)
    dirty: set[K] = field(default_factory=set)
    writes: int = 0  # successful kernel writes since start

    # -- what we want ----------
    def set_desired(self, key: K, value: V) -> None:
        if self.desired.get(key, _ABSENT) != value:
            self.desired[key] = value
            self.dirty.add(key)

    def delete_desired(self, key: K) -> None:
        if self.desired.pop(key, None) is not None:
            self.dirty.add(key)

    def replace_desired(self, desired: dict[K, V]) -> None:
        old = self.desired
        self.dirty.update(k for k in old.keys() - desired.keys())
        self.dirty.update(k for k, v in desired.items() if old.get(k, _ABSENT) != v)
        self.desired = desired

    # -- what the kernel has ----------
    def load_kernel(self, kernel: dict[K, V]) -> None:
        """A fresh dump replaces the cache: every key where it and desire differ is dirty."""
        desired = self.desired
        if kernel == desired:  # the common case, compared at C speed
            # desire's own objects, not the dump's equal copies: those would double the
            # table's memory from the first periodic resync on (13 MiB at 20 000 peers)
            self.kernel = desired.copy()
            return
        self.kernel = kernel
        self.dirty.update(kernel.keys() ^ desired.keys())
        self.dirty.update(k for k, v in kernel.items() if k in desired and desired[k] != v)

    def kernel_changed(self, key: K, value: V | None) -> None:
        """A notification (or knowledge) that the kernel now holds `value` (None: nothing)."""
        if value is None:
            if self.kernel.pop(key, None) is None:
                return
        elif self.kernel.get(key) == value:
            return
        else:
            self.kernel[key] = value
        self.dirty.add(key)

    # -- the pass ----------
    def plan(self, keys: Iterable[K] | None = None) -> tuple[list[Op[K, V]], list[Op[K, V]]]:
        """(sets, deletes) needed for the dirty keys (or just `keys` of them). Keys already in
        step are cleaned; the others stay dirty until record() sees them in step, so a write
        that fails, raises or is never sent is never forgotten."""
        sets, dels, clean = [], [], []
        for key in self.dirty if keys is None else keys:
            want, have = self.desired.get(key), self.kernel.get(key)
            if want is not None:
                if have != want:
                    sets.append(Op(self, False, key, want))
                else:
                    clean.append(key)
            elif have is not None:
                dels.append(Op(self, True, key, have))
            else:
                clean.append(key)
        self.dirty.difference_update(clean)
        return sets, dels

    def record(self, op: Op[K, V], ok: bool) -> None:
        """Outcome of a planned op: the cache follows success only. The key stays dirty unless
        it is now in step (a failure, or a desire that changed while the op was in flight)."""
        if not ok:
            return
        self.writes += 1
        if op.delete:
            self.kernel.pop(op.key, None)
        else:
            self.kernel[op.key] = op.value
        if self.desired.get(op.key) == self.kernel.get(op.key):
            self.dirty.discard(op.key)
            if not self.dirty:  # a set never shrinks: after a first sync of 20 000 keys
                self.dirty = set()  # the empty one would keep 2 MiB

    def record_all(self, ops: list[Op[K, V]]) -> None:
        """Every op of one synchronous batch succeeded: record() for each, in bulk at C speed
        (a first sync records 20 000 writes per table)."""
        self.writes += len(ops)
        keys = [op.key for op in ops]
        if ops[0].delete:
            kernel = self.kernel
            for k in keys:
                kernel.pop(k, None)
            in_step = not any(map(self.desired.__contains__, keys))
        else:
            values = [op.value for op in ops]
            self.kernel.update(zip(keys, values, strict=True))
            in_step = all(map(operator.eq, map(self.desired.get, keys), values))
        if in_step:  # else a desire changed meanwhile: those keys stay dirty, one by one
            self.dirty.difference_update(keys)
            if not self.dirty:
                self.dirty = set()
        else:
            for k in keys:
                if self.desired.get(k) == self.kernel.get(k):
                    self.dirty.discard(k)

    def drift(self) -> tuple[list[K], list[K], list[K]]:
        """(missing, wrong, extra) keys as of the cache: what /v1/state reports."""
        missing = [k for k in self.desired if k not in self.kernel]
        wrong = [k for k, v in self.desired.items() if k in self.kernel and self.kernel[k] != v]
        extra = [k for k in self.kernel if k not in self.desired]
        return missing, wrong, extra
