"""The one desired-vs-kernel mechanism, reused by every table (routes, neighbours, FDB, nexthops,
the on-demand answers).

Modelled on Calico Felix's delta tracker: each table holds what we want, what we believe the
kernel holds (from dumps, our own writes and netlink notifications), and the keys where the two
may differ. A pass turns only those keys into requests (`replace` or `delete`, never a flush),
so an unchanged entry is never written and traffic through it never notices. The cache follows
success only: a write that fails, raises or is never sent leaves its key dirty.

The three maps are the table's own: others read them through the views below and change them
through its operations. The kernel tables (kernel/routes.py, neighbours.py, nexthops.py) add
what only they know: how to dump their entries, which entries are ours, how to read a
notification.
"""

from __future__ import annotations

import errno
import logging
import operator
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from vxnet.kernel.port import Kernel, Request

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_ABSENT = object()
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)  # deleting what is already gone is success


class Op(NamedTuple, Generic[K, V]):
    """One planned kernel write; `value` is the new value (set) or the kernel's (delete). A
    tuple: a pass makes one per entry written, and a frozen dataclass costs 3x as much to build."""

    table: DeltaTable[K, V]
    delete: bool
    key: K
    value: V

    def __str__(self) -> str:
        return f"{'delete' if self.delete else 'set'} {self.table.name} {self.table.show(self.key)}"


@dataclass(slots=True)
class PassResult:
    """What one pass wrote (per table), what failed, and how long it took."""

    writes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.writes.values())


@dataclass(frozen=True, slots=True)
class Drift:
    """Keys as of the cache: wanted but absent, present with another value, present unwanted."""

    missing: list[str]
    wrong: list[str]
    extra: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.wrong or self.extra)


class DeltaTable(Generic[K, V]):
    def __init__(self, name: str, encode_set: Callable[[K, V], Request],
                 encode_del: Callable[[K, V], Request], show: Callable[[K], str] = str) -> None:
        self.name = name
        self.encode_set, self.encode_del, self.show = encode_set, encode_del, show
        self._desired: dict[K, V] = {}
        self._kernel: dict[K, V] = {}
        self._dirty: set[K] = set()
        self._failing: dict[K, str] = {}  # key -> last error, so each is logged once
        self.writes = 0  # successful kernel writes since start

    # -- views ----------
    def desired(self, key: K) -> V | None:
        return self._desired.get(key)

    def in_kernel(self, key: K) -> V | None:
        return self._kernel.get(key)

    def wants(self, key: K) -> bool:
        return key in self._desired

    def holds(self, key: K) -> bool:
        """The kernel has an entry at `key` (as far as the cache knows)."""
        return key in self._kernel

    def in_step(self, key: K) -> bool:
        return self._kernel.get(key) == self._desired.get(key)

    def is_dirty(self, key: K) -> bool:
        return key in self._dirty

    @property
    def pending(self) -> bool:
        """Keys not known to be in step: work for the next pass."""
        return bool(self._dirty)

    def pending_keys(self) -> list[K]:
        return list(self._dirty)

    @property
    def kernel_size(self) -> int:
        return len(self._kernel)

    def kernel_items(self) -> Iterator[tuple[K, V]]:
        """A snapshot: the caller may change the table while it iterates."""
        return iter(list(self._kernel.items()))

    def desired_items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self._desired.items()))

    @property
    def failing(self) -> int:
        """Entries whose last write failed (each retried, and logged once per error)."""
        return len(self._failing)

    def drift(self) -> Drift:
        """What /v1/state reports, keys shown as the table shows them."""
        d, k, show = self._desired, self._kernel, self.show
        return Drift([show(x) for x in d if x not in k],
                     [show(x) for x, v in d.items() if x in k and k[x] != v],
                     [show(x) for x in k if x not in d])

    # -- what we want ----------
    def set_desired(self, key: K, value: V) -> None:
        if self._desired.get(key, _ABSENT) != value:
            self._desired[key] = value
            self._dirty.add(key)

    def delete_desired(self, key: K) -> None:
        self._failing.pop(key, None)
        if self._desired.pop(key, None) is not None:
            self._dirty.add(key)

    def rewrite(self, key: K, value: V) -> None:
        """Write `value` at the next pass even if the cache says the kernel has it (the kernel
        asked for it: what it has is not usable)."""
        self._kernel.pop(key, None)
        self._desired[key] = value
        self._dirty.add(key)

    def settle(self, key: K, want: V | None) -> None:
        """Desire at `key` becomes `want` (None: nothing), dirty only if the kernel differs."""
        if want is None:
            self._desired.pop(key, None)
        else:
            self._desired[key] = want
        if want != self._kernel.get(key):
            self._dirty.add(key)

    def reset(self) -> None:
        """Forget everything: the device behind the table was replaced."""
        self._desired, self._kernel, self._dirty, self._failing = {}, {}, set(), {}

    # -- what the kernel has ----------
    def load_kernel(self, kernel: dict[K, V]) -> None:
        """A fresh dump replaces the cache: every key where it and desire differ is dirty."""
        desired = self._desired
        if kernel == desired:  # the common case, compared at C speed
            # desire's own objects, not the dump's equal copies: those would double the
            # table's memory from the first periodic resync on (13 MiB at 20 000 peers)
            self._kernel = desired.copy()
            return
        self._kernel = kernel
        self._dirty.update(kernel.keys() ^ desired.keys())
        self._dirty.update(k for k, v in kernel.items() if k in desired and desired[k] != v)

    def kernel_changed(self, key: K, value: V | None) -> None:
        """A notification (or knowledge) that the kernel now holds `value` (None: nothing)."""
        if value is None:
            if self._kernel.pop(key, None) is None:
                return
        elif self._kernel.get(key) == value:
            return
        else:
            self._kernel[key] = value
        self._dirty.add(key)

    def kernel_forgot(self, key: K) -> None:
        """The kernel dropped `key` by itself: desire follows unless a write is on its way
        (on-demand answers the kernel aged out are not put back)."""
        self._kernel.pop(key, None)
        if key not in self._dirty:
            self._desired.pop(key, None)

    def keep_only_pending(self) -> None:
        """Before a fresh dump is filed entry by entry: keep only desires not yet written."""
        pending = {k: self._desired[k] for k in self._dirty if k in self._desired}
        self._kernel, self._desired, self._dirty = {}, pending, set(pending)

    def set_kernel(self, key: K, value: V) -> None:
        """The kernel holds `value` at `key`; whether that is work is for settle() to say."""
        self._kernel[key] = value

    # -- the pass ----------
    def plan(self, keys: Iterable[K] | None = None) -> tuple[list[Op[K, V]], list[Op[K, V]]]:
        """(sets, deletes) needed for the dirty keys (or just `keys` of them). Keys already in
        step are cleaned; the others stay dirty until record() sees them in step, so a write
        that fails, raises or is never sent is never forgotten."""
        sets: list[Op[K, V]] = []
        dels: list[Op[K, V]] = []
        clean = []
        desired, kernel = self._desired, self._kernel
        for key in self._dirty if keys is None else keys:
            want, have = desired.get(key), kernel.get(key)
            if want is not None:
                if have != want:
                    sets.append(Op(self, False, key, want))
                else:
                    clean.append(key)
            elif have is not None:
                dels.append(Op(self, True, key, have))
            else:
                clean.append(key)
        self._dirty.difference_update(clean)
        return sets, dels

    def record(self, op: Op[K, V], ok: bool) -> None:
        """Outcome of a planned op: the cache follows success only. The key stays dirty unless
        it is now in step (a failure, or a desire that changed while the op was in flight)."""
        if not ok:
            return
        self.writes += 1
        if op.delete:
            self._kernel.pop(op.key, None)
        else:
            self._kernel[op.key] = op.value
        if self._desired.get(op.key) == self._kernel.get(op.key):
            self._dirty.discard(op.key)
            if not self._dirty:  # a set never shrinks: after a first sync of 20 000 keys
                self._dirty = set()  # the empty one would keep 2 MiB

    def record_all(self, ops: list[Op[K, V]]) -> None:
        """Every op of one synchronous batch succeeded: record() for each, in bulk at C speed
        (a first sync records 20 000 writes per table)."""
        self.writes += len(ops)
        keys = [op.key for op in ops]
        if ops[0].delete:
            kernel = self._kernel
            for k in keys:
                kernel.pop(k, None)
            in_step = not any(map(self._desired.__contains__, keys))
        else:
            values = [op.value for op in ops]
            self._kernel.update(zip(keys, values, strict=True))
            in_step = all(map(operator.eq, map(self._desired.get, keys), values))
        if in_step:  # else a desire changed meanwhile: those keys stay dirty, one by one
            self._dirty.difference_update(keys)
            if not self._dirty:
                self._dirty = set()
        else:
            for k in keys:
                if self._desired.get(k) == self._kernel.get(k):
                    self._dirty.discard(k)

    def write(self, kernel: Kernel, ops: list[Op[K, V]], result: PassResult) -> None:
        """Planned ops of this table (all sets or all deletes), written in one batch; the
        cache follows what succeeded, each failing entry is logged once per error."""
        encode = self.encode_del if ops[0].delete else self.encode_set
        failures = kernel.batch((op, encode(op.key, op.value)) for op in ops)
        if not failures:  # the common case, recorded in bulk
            self.record_all(ops)
            result.writes[self.name] += len(ops)
            if self._failing:
                for op in ops:
                    self._failing.pop(op.key, None)
            return
        failed = {id(f.entry): f.error for f in failures}
        for op in ops:
            err = failed.get(id(op))
            ok = err is None or (op.delete and err.errno in _GONE)
            self.record(op, ok)
            if ok:
                result.writes[self.name] += 1
                self._failing.pop(op.key, None)
            elif err is not None:
                result.failures.append(str(err))
                if self._failing.get(op.key) != str(err):
                    log.warning("kernel write failed: %s", err)  # once per entry and error
                self._failing[op.key] = str(err)


class DeviceTable(DeltaTable[K, V]):
    """A kernel table's entries on one device (our VXLAN device): all forgotten when the device
    is replaced, its write counts kept."""

    def __init__(self, name: str, ifindex: int, encode_set: Callable[[K, V], Request],
                 encode_del: Callable[[K, V], Request], show: Callable[[K], str] = str) -> None:
        super().__init__(name, encode_set, encode_del, show)
        self.ifindex = ifindex

    def rebind(self, ifindex: int) -> None:
        self.reset()
        self.ifindex = ifindex
