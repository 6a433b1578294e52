"""An in-memory stand-in for RtnlSocket: keeps what was written, replays it as dumps, and fails
the requests a test chooses. Bodies are the codec's own, so dumps parse exactly as real ones.

Fail flags, as Felix's mocknetlink has: `fail` picks an errno per entry; `batch_raises` makes a
whole batch raise (a socket error: nothing is known to be written); `dump_raises` makes dumps
raise (e.g. interrupted five times); `deleted_behind_our_back` removes an entry as another
program would and returns the notification the kernel would send."""

from __future__ import annotations

import errno
from collections.abc import Callable

from vxnet.kernel import netlink as nl

_NEW = {nl.RTM_NEWROUTE: "route", nl.RTM_NEWNEIGH: "neigh", nl.RTM_NEWNEXTHOP: "nexthop"}
_DEL = {nl.RTM_DELROUTE: "route", nl.RTM_DELNEIGH: "neigh", nl.RTM_DELNEXTHOP: "nexthop"}
_DUMP = {nl.RTM_GETROUTE: "route", nl.RTM_GETNEIGH: "neigh", nl.RTM_GETNEXTHOP: "nexthop"}


def _key(kind: str, body: bytes):
    if kind == "route":
        return nl.parse_route(body, 0, len(body))[1]
    if kind == "nexthop":
        return nl.parse_attrs(body, 8, len(body))[nl.NHA_ID]
    fam, ifindex, _, _, dst, mac = nl.parse_neigh(body, 0, len(body))
    return fam, ifindex, mac if fam == nl.AF_BRIDGE else dst


class FakeKernel:
    def __init__(self) -> None:
        self.state: dict[str, dict] = {"route": {}, "neigh": {}, "nexthop": {}}
        self.fail: Callable[[object], int] = lambda entry: 0  # errno to fail an entry with
        self.log: list[str] = []
        self.requests = 0
        self.batch_raises: Exception | None = None
        self.dump_raises: Exception | None = None
        self.dumps = 0

    def batch(self, requests):
        if self.batch_raises is not None:
            raise self.batch_raises
        failures = []
        for entry, (mtype, _, body) in requests:
            self.requests += 1
            self.log.append(str(entry))
            code = self.fail(entry)
            if not code and mtype in _DEL:
                table = self.state[_DEL[mtype]]
                if table.pop(_key(_DEL[mtype], body), None) is None:
                    code = errno.ENOENT
            elif not code:
                kind = _NEW[mtype]
                self.state[kind][_key(kind, body)] = body
            if code:
                failures.append(nl.Failure(entry, nl.NetlinkError(code, entry)))
        return failures

    def dump(self, mtype, body):
        self.dumps += 1
        if self.dump_raises is not None:
            raise self.dump_raises
        kind = _DUMP[mtype]
        return [(b, 0, len(b)) for b in self.state[kind].values()]

    def deleted_behind_our_back(self, kind: str) -> tuple[int, bytes]:
        """Remove one entry of `kind` as someone else would: (message type, body) of the
        notification the kernel sends about it."""
        key = next(iter(self.state[kind]))
        body = self.state[kind].pop(key)
        mtype = next(t for t, k in _DEL.items() if k == kind)
        return mtype, body
