"""Tables of ours in nftables, kept as we loaded them: the one mechanism behind the VXLAN
allow-list (allowlist.py) and the --ip-masq tables (masq.py).

An OwnedTable is loaded whole, by a script that replaces it in one transaction (packets never
see a moment without rules), and listed right after: that listing's shape -- the table without
what changes by itself, set elements and counter values -- is what it must stay. check() lists
it again and, when it is gone or its shape differs, loads it again and counts a repair.

A TableWatch says at once when someone else changed a table of ours. It subscribes to the
nftables notifications, where each transaction ends with a message naming the process that
committed it; our own nft runs are known by their PID (nft.ours). The owner checks its tables
on such a change and on a timer, a backstop for anything no notification says; notifications
lost count as a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from vxnet.kernel import nft
from vxnet.kernel.events import EventSocket
from vxnet.kernel.netlink import Event, parse_attrs

log = logging.getLogger(__name__)

# nfnetlink: notifications of nftables changes
NETLINK_NETFILTER, NFNLGRP_NFTABLES, NFNL_SUBSYS_NFTABLES = 12, 7, 10
NFT_MSG_NEWGEN, NFTA_GEN_PROC_PID = 15, 2
NFTA_TABLE = 1  # attribute 1 names the table in every nf_tables message but NEWGEN
FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}  # NFPROTO_*
_BE32 = struct.Struct("!I")

Doc = dict[str, Any]  # what `nft -j` prints


class Runner(Protocol):
    """How a table runs nft (nft.nft): (exit code, stdout, stderr)."""

    async def __call__(self, *args: str, stdin: str | None = None,
                       netns: str | None = None) -> tuple[int, str, str]: ...


class NamedTable(NamedTuple):
    """A table a TableWatch watches that is not an OwnedTable (iptables' filter table)."""

    family: str
    name: str


def shape(doc: Doc) -> list[Any]:
    """The table as listed, without what changes by itself (set elements, counter values)."""
    out = []
    for obj in doc.get("nftables", []):
        if "metainfo" in obj:
            continue
        kind, body = next(iter(obj.items()))
        body = {k: v for k, v in body.items() if k not in ("elem", "packets", "bytes")}
        out.append((kind, body))
    return out


class OwnedTable:
    """The table `family name` (in `netns` if given), vxnet's alone; `what` names it in errors
    and logs. Its loads and checks run one at a time."""

    def __init__(self, family: str, name: str, what: str, *, netns: str | None = None,
                 run: Runner = nft.nft) -> None:
        self.family, self.name, self.what, self.netns, self.run = family, name, what, netns, run
        self.repairs = 0  # found changed or gone, and put back
        self.shape: list[Any] | None = None  # as listed right after our last load (None: none)
        self._lock = asyncio.Lock()

    async def exists(self) -> bool:
        rc, _, _ = await self.run("list", "table", self.family, self.name, netns=self.netns)
        return rc == 0

    async def apply(self, script: str, what: str | None = None) -> None:
        """Run a script as one transaction (`what` it carries, for the error), or raise
        NftError saying what failed."""
        rc, _, err = await self.run("-f", "-", stdin=script, netns=self.netns)
        if rc != 0:
            raise nft.NftError(f"nft could not load {what or self.what}: {err.strip()}")

    async def load(self, script: str) -> None:
        """Load the whole table (`script` replaces it in one transaction) and learn its shape."""
        async with self._lock:
            await self._load(script)

    async def listing(self, kind: str = "table", *names: str) -> Doc:
        """`nft -j list KIND` of this table (or of its counter or set `names`), parsed; {} when
        it is not there."""
        args = ("-j", "list", kind, self.family, self.name, *names)
        rc, out, _ = await self.run(*args, netns=self.netns)
        if rc != 0 or not out.strip():
            return {}
        try:
            doc: Doc = json.loads(out)
        except ValueError:
            raise nft.NftError(f"nft {' '.join(args)}: not JSON: {out[:80]!r}") from None
        return doc

    async def in_step(self) -> bool:
        """Is the table there, the shape we loaded?"""
        return self._as_loaded(await self.listing())

    async def check(self, script: Callable[[], str]) -> Doc | None:
        """List the table: as we loaded it, the listing is returned (its set elements and
        counters are the owner's to read). Gone or changed, it is loaded again from script()
        -- a repair, unless we had not loaded it yet (a table left by an earlier run) -- and
        None is returned."""
        async with self._lock:
            doc = await self.listing()
            if self._as_loaded(doc):
                return doc
            if self.shape is not None:
                log.warning("%s (nftables table %s %s): %s; loading it again", self.what,
                            self.family, self.name, "changed" if doc else "gone")
                self.repairs += 1  # as found: whoever sees the table back sees it counted
                self.shape = None  # should the load fail, its retry is this same repair
            await self._load(script())
            return None

    def _as_loaded(self, doc: Doc) -> bool:
        return bool(doc) and self.shape is not None and shape(doc) == self.shape

    async def _load(self, script: str) -> None:
        await self.apply(script)
        doc = await self.listing()
        self.shape = shape(doc) if doc else None


class TableWatch:
    """Notices transactions someone else committed that touched one of `tables()` (all in
    `netns`): wait() then returns True. Open it before the look its changes are compared with,
    so that none goes unseen."""

    def __init__(self, tables: Callable[[], Iterable[OwnedTable | NamedTable]], *,
                 netns: str | None = None, name: str = "nftables notifications") -> None:
        self.tables = tables
        self.foreign = 0  # others' transactions that touched our tables
        self._changed = False  # since the last wait()
        self._touched = False  # the transaction being notified touched one of our tables
        self._wake = asyncio.Event()
        self._events = EventSocket((NFNLGRP_NFTABLES,), self._notified, self._lost,
                                   netns=netns, protocol=NETLINK_NETFILTER, rcvbuf=1 << 20,
                                   name=name)

    @property
    def is_open(self) -> bool:
        return self._events.is_open

    def open(self) -> None:
        self._touched = False
        self._events.open()

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> TableWatch:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def poke(self) -> None:
        """Wake wait() without a change: the owner has work of its own."""
        self._wake.set()

    async def wait(self, timeout: float) -> bool:
        """Until a change or a poke, `timeout` seconds at most; True when someone else changed
        a table of ours, or notifications were lost, since the last call."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
        self._wake.clear()
        changed, self._changed = self._changed, False
        return changed

    def _notified(self, events: list[Event]) -> None:
        """A transaction's notifications end with NEWGEN naming the committing process: ours
        (an nft we ran) are expected; anyone else's that touched a table of ours is a change."""
        ours = {(FAMILIES[t.family], t.name.encode()) for t in self.tables()}
        for mtype, buf, off, end in events:
            if mtype >> 8 != NFNL_SUBSYS_NFTABLES or off + 4 > end:
                continue
            attrs = parse_attrs(buf, off + 4, end)  # after the nfgenmsg header
            if mtype & 0xFF == NFT_MSG_NEWGEN:
                pid = attrs.get(NFTA_GEN_PROC_PID)
                if self._touched and not (pid and nft.ours(_BE32.unpack(pid[:4])[0])):
                    self.foreign += 1
                    self._change()
                self._touched = False
            elif (buf[off], attrs.get(NFTA_TABLE, b"").rstrip(b"\0")) in ours:
                self._touched = True

    def _lost(self, _: OSError) -> None:
        """Notifications lost (or the socket failed, and was replaced): assume the worst."""
        self._touched = False
        self._change()

    def _change(self) -> None:
        self._changed = True
        self._wake.set()
