"""An in-memory stand-in for the kernel (vxnet.kernel.port.Kernel, as RtnlSocket is): keeps what
was written, replays it as dumps, and fails the calls a test chooses. Bodies are the codec's
own, so dumps parse exactly as real ones.

Fail flags, as Felix's mocknetlink has, one or more for every call of Kernel (each stays set
until the test clears it):
- `fail(what)`: an errno to fail a request of a batch with (0: written); `what` names it as
  `log` does, e.g. "set route 10.244.2.0/24", "delete fdb 0e:18:0a:f4:02:00";
- `batch_raises`: the whole batch raises (a socket error: nothing is known to be written);
- `dump_raises`: every dump raises (e.g. interrupted five times);
- `dump_fails[kind]`: dumps of one kind ("route", "neigh", "fdb", "nexthop") raise (a kernel
  without nexthop objects refuses their dump).
`deleted_behind_our_back` removes an entry as another program would and returns the
notification the kernel would send."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Hashable, Iterable, Sequence

from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Failure, Reply

_NEW = {nl.RTM_NEWROUTE: "route", nl.RTM_NEWNEIGH: "neigh", nl.RTM_NEWNEXTHOP: "nexthop"}
_DEL = {nl.RTM_DELROUTE: "route", nl.RTM_DELNEIGH: "neigh", nl.RTM_DELNEXTHOP: "nexthop"}
_DUMP = {nl.RTM_GETROUTE: "route", nl.RTM_GETNEIGH: "neigh", nl.RTM_GETNEXTHOP: "nexthop"}


def _key(kind: str, body: bytes) -> Hashable:
    if kind == "route":
        route = nl.parse_route(body, 0, len(body))
        assert route is not None, "only unicast routes are written"
        return route[1], route[2], route[3]
    if kind == "nexthop":
        return nl.parse_attrs(body, 8, len(body))[nl.NHA_ID]
    fam, ifindex, _, _, dst, mac = nl.parse_neigh(body, 0, len(body))
    return fam, ifindex, mac if fam == nl.AF_BRIDGE else dst


def _describe(mtype: int, body: bytes) -> str:
    """A request as a test names it: "set route 10.244.2.0/24", "delete fdb 0e:..."."""
    verb = "delete" if mtype in _DEL else "set"
    kind = (_DEL | _NEW)[mtype]
    if kind == "route":
        route = nl.parse_route(body, 0, len(body))
        assert route is not None
        return f"{verb} route {ipaddress.ip_address(route[2])}/{route[3]}"
    if kind == "nexthop":
        return f"{verb} nexthop {nl.U32.unpack(nl.parse_attrs(body, 8, len(body))[nl.NHA_ID])[0]}"
    fam, _, _, _, dst, mac = nl.parse_neigh(body, 0, len(body))
    if fam == nl.AF_BRIDGE:
        assert mac is not None
        return f"{verb} fdb {mac.hex(':')}"
    assert dst is not None
    return f"{verb} neigh {ipaddress.ip_address(dst)}"


def _dump_kind(mtype: int, body: bytes) -> str:
    """What a dump request asks for, in the names of `dump_fails`."""
    kind = _DUMP[mtype]
    return "fdb" if kind == "neigh" and body[:1] == bytes([nl.AF_BRIDGE]) else kind


class FakeKernel:
    def __init__(self) -> None:
        self.state: dict[str, dict[Hashable, bytes]] = {"route": {}, "neigh": {}, "nexthop": {}}
        self.fail: Callable[[str], int] = lambda what: 0  # errno to fail a request with
        self.batch_raises: BaseException | None = None
        self.dump_raises: BaseException | None = None
        self.dump_fails: dict[str, BaseException] = {}
        self.log: list[str] = []
        self.requests = 0
        self.dumps = 0

    def batch(self, mtype: int, flags: int, bodies: Sequence[bytes]) -> list[Failure]:
        if self.batch_raises is not None:
            raise self.batch_raises
        failures = []
        for index, body in enumerate(bodies):
            self.requests += 1
            what = _describe(mtype, body)
            self.log.append(what)
            code = self.fail(what)
            if not code and mtype in _DEL:
                table = self.state[_DEL[mtype]]
                if table.pop(_key(_DEL[mtype], body), None) is None:
                    code = errno.ENOENT
            elif not code:
                kind = _NEW[mtype]
                self.state[kind][_key(kind, body)] = body
            if code:
                failures.append(Failure(index, code))
        return failures

    def dump(self, mtype: int, body: bytes) -> Iterable[Reply]:
        self.dumps += 1
        if self.dump_raises is not None:
            raise self.dump_raises
        failed = self.dump_fails.get(_dump_kind(mtype, body))
        if failed is not None:
            raise failed
        kind = _DUMP[mtype]
        if kind == "neigh":  # as the kernel does: only the family asked for (AF_BRIDGE: FDB)
            return [(b, 0, len(b)) for b in self.state[kind].values() if b[:1] == body[:1]]
        return [(b, 0, len(b)) for b in self.state[kind].values()]

    def deleted_behind_our_back(self, kind: str) -> tuple[int, bytes]:
        """Remove one entry of `kind` as someone else would: (message type, body) of the
        notification the kernel sends about it."""
        key = next(iter(self.state[kind]))
        body = self.state[kind].pop(key)
        mtype = next(t for t, k in _DEL.items() if k == kind)
        return mtype, body
