"""The one desired-vs-kernel mechanism, reused by every table (routes, neighbours, FDB, nexthops,
the on-demand answers).

Modelled on Calico Felix's delta tracker: each table holds what we want, what we believe the
kernel holds (from dumps, our own writes and netlink notifications), and the keys where the two
may differ. A pass turns only those keys into requests (`replace` or `delete`, never a flush),
so an unchanged entry is never written and traffic through it never notices. The cache follows
success only: a write that fails, raises or is never sent leaves its key dirty.

The three maps are the table's own: others read them through the views below and change them
through its operations. The kernel tables (kernel/routes.py, neighbours.py, nexthops.py) add
what only they know: how an entry is encoded, how to dump their entries, which entries are
ours, how to read a notification.

Entries are compact (kernel/netlink.py): keys and values are bytes or ints, so a pass compares
and writes them without an object per entry, and a table of 20 000 entries is two dicts of
small bytes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import operator
import struct
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel, Reply

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_ABSENT = object()
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)  # deleting what is already gone is success
_CACHEINFO_LEN = 20  # NDA_CACHEINFO: its header and struct nda_cacheinfo (four u32)
_CACHEINFO = struct.pack("=HH", _CACHEINFO_LEN, nl.NDA_CACHEINFO)


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
    # (message type, flags) of a set and of a delete; each subclass says how to encode them
    SET: ClassVar[tuple[int, int]]
    DEL: ClassVar[tuple[int, int]]

    def __init__(self, name: str, show: Callable[[K], str] = str) -> None:
        self.name, self.show = name, show
        self._desired: dict[K, V] = {}
        self._kernel: dict[K, V] = {}
        self._dirty: set[K] = set()
        self._failing: dict[K, str] = {}  # key -> last error, so each is logged once
        self.writes = 0  # successful kernel writes since start
        # digest of the dump the cache was loaded from, while nothing has changed the cache
        # since: a dump with the same digest says nothing new and need not be parsed
        self._dumped: bytes | None = None

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

    def pending_keys(self, sets_only: bool = False) -> list[K]:
        """The dirty keys; sets_only: just those we want something at (not what the kernel
        holds beyond that), picked out at C speed."""
        return list(self._dirty & self._desired.keys()) if sets_only else list(self._dirty)

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
        self._dumped = None
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
        self._dumped = None

    # -- what the kernel has ----------
    def says_nothing_new(self, digest: bytes) -> bool:
        """A dump with this digest is the one the cache was loaded from, and nothing changed
        the cache since (dump_digest())."""
        return digest == self._dumped

    def loaded_from(self, digest: bytes) -> None:
        """The cache now holds exactly what the dump with this digest said."""
        self._dumped = digest

    def load_kernel(self, kernel: dict[K, V]) -> None:
        """A fresh dump replaces the cache: every key where it and desire differ is dirty."""
        self._dumped = None
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
        self._dumped = None
        self._dirty.add(key)

    def kernel_forgot(self, key: K) -> None:
        """The kernel dropped `key` by itself: desire follows unless a write is on its way
        (on-demand answers the kernel aged out are not put back)."""
        self._kernel.pop(key, None)
        self._dumped = None
        if key not in self._dirty:
            self._desired.pop(key, None)

    def keep_only_pending(self) -> None:
        """Before a fresh dump is filed entry by entry: keep only desires not yet written."""
        pending = {k: self._desired[k] for k in self._dirty if k in self._desired}
        self._kernel, self._desired, self._dirty = {}, pending, set(pending)
        self._dumped = None

    def set_kernel(self, key: K, value: V) -> None:
        """The kernel holds `value` at `key`; whether that is work is for settle() to say."""
        self._kernel[key] = value
        self._dumped = None

    # -- the pass ----------
    def encode_set(self, key: K, value: V) -> bytes:
        raise NotImplementedError

    def encode_del(self, key: K, value: V) -> bytes:
        raise NotImplementedError

    def plan(self, keys: Iterable[K] | None = None) -> tuple[list[K], list[K]]:
        """(keys to set, keys to delete) among the dirty keys (or just `keys` of them). Keys
        already in step are cleaned; the others stay dirty until a write leaves them in step,
        so a write that fails, raises or is never sent is never forgotten."""
        sets: list[K] = []
        dels: list[K] = []
        clean = []
        desired, kernel = self._desired, self._kernel
        for key in self._dirty if keys is None else keys:
            want, have = desired.get(key), kernel.get(key)
            if want is not None:
                if have != want:
                    sets.append(key)
                else:
                    clean.append(key)
            elif have is not None:
                dels.append(key)
            else:
                clean.append(key)
        self._dirty.difference_update(clean)
        return sets, dels

    def write(self, kernel: Kernel, keys: list[K], delete: bool, result: PassResult) -> None:
        """Planned keys of this table (all sets or all deletes) written in one batch; the cache
        follows what succeeded, each failing entry is logged once per error."""
        if delete:
            values = list(map(self._kernel.__getitem__, keys))
            mtype, flags = self.DEL
            bodies = list(map(self.encode_del, keys, values))
        else:
            values = list(map(self._desired.__getitem__, keys))
            mtype, flags = self.SET
            bodies = list(map(self.encode_set, keys, values))
        failures = kernel.batch(mtype, flags, bodies)
        if not failures:  # the common case, recorded in bulk at C speed
            self._record(keys, values, delete)
            result.writes[self.name] += len(keys)
            if self._failing:
                for k in keys:
                    self._failing.pop(k, None)
            return
        failed = {f.index: f for f in failures}
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            f = failed.get(i)
            if f is None or (delete and f.errno in _GONE):  # deleting what is gone succeeded
                self._record([key], [value], delete)
                result.writes[self.name] += 1
                self._failing.pop(key, None)
                continue
            err = str(nl.NetlinkError(f.errno, f"{'delete' if delete else 'set'} {self.name} "
                                      f"{self.show(key)}", f.detail))
            result.failures.append(err)
            if self._failing.get(key) != err:
                log.warning("kernel write failed: %s", err)  # once per entry and error
            self._failing[key] = err

    def _record(self, keys: list[K], values: list[V], delete: bool) -> None:
        """These writes succeeded: the cache follows; keys now in step are clean (a desire that
        changed while a write was in flight leaves its key dirty)."""
        self.writes += len(keys)
        self._dumped = None
        desired, kernel = self._desired, self._kernel
        if delete:
            for k in keys:
                kernel.pop(k, None)
            in_step = not any(map(desired.__contains__, keys))
        else:
            kernel.update(zip(keys, values, strict=True))
            in_step = all(map(operator.eq, map(desired.get, keys), values))
        if in_step:
            self._dirty.difference_update(keys)
        else:
            for k in keys:
                if desired.get(k) == kernel.get(k):
                    self._dirty.discard(k)
        if not self._dirty:  # a set never shrinks: after a first sync of 20 000 keys
            self._dirty = set()  # the empty one would keep 2 MiB


def dump_digest(replies: Iterable[Reply], strip_cacheinfo: bool = False) -> bytes:
    """What a dump said, in 16 bytes: equal digests, equal dumps. Left out: what changes from
    dump to dump while the entries do not -- the sequence numbers in the messages' headers,
    and with `strip_cacheinfo` a neighbour message's cache ages (its last attribute, when it is
    those). A netlink.Dump is digested datagram by datagram: one of equally long messages
    (nearly all) with those bytes masked by strided slices, at C speed; any other message by
    message, as a plain list of replies is."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(replies, nl.Dump):
        for data in replies.datagrams:
            masked = _masked(data, strip_cacheinfo)
            if masked is not None:
                h.update(b"M")
                h.update(masked)
            else:
                h.update(b"W")
                _digest_messages(h.update, nl.Dump([data]), strip_cacheinfo)
    else:
        _digest_messages(h.update, replies, strip_cacheinfo)
    return h.digest()


def _digest_messages(update: Callable[[bytes], None], replies: Iterable[Reply],
                     strip_cacheinfo: bool) -> None:
    for buf, off, end in replies:
        if strip_cacheinfo and buf[end - _CACHEINFO_LEN:end - _CACHEINFO_LEN + 4] == _CACHEINFO:
            update(buf[off:end - _CACHEINFO_LEN])
        else:
            update(buf[off:end])


def _masked(data: bytes, strip_cacheinfo: bool) -> bytearray | None:
    """The datagram with every message's sequence number (and cache ages) zeroed, if its
    messages are all alike (netlink.uniform) and, to strip, all end with their cache ages;
    else None."""
    n = nl.uniform(data)
    if not n:
        return None
    count = len(data) // n
    zeros = bytes(count)
    buf = bytearray(data)
    for i in range(8, 12):  # nlmsg_seq
        buf[i::n] = zeros
    if strip_cacheinfo:
        at = n - _CACHEINFO_LEN
        if at < 16 or any(data[at + i::n] != _CACHEINFO[i:i + 1] * count for i in range(4)):
            return None
        for i in range(at + 4, n):
            buf[i::n] = zeros
    return buf


class DeviceTable(DeltaTable[K, V]):
    """A kernel table's entries on one device (our VXLAN device): all forgotten when the device
    is replaced, its write counts kept."""

    def __init__(self, name: str, ifindex: int, show: Callable[[K], str] = str) -> None:
        super().__init__(name, show)
        self.ifindex = ifindex

    def rebind(self, ifindex: int) -> None:
        self.reset()
        self.ifindex = ifindex
