"""The one kernel interface: the real socket and the fake kernel both are a `Kernel` (mypy
--strict checks the assignments below; the tests check the same at run time), and the fake can
make every call of it fail."""

from __future__ import annotations

import errno
import inspect
import socket

import pytest

from tests.unit.kernel.fakekernel import FakeKernel
from vxnet.kernel import netlink as nl
from vxnet.kernel.port import Kernel


def _static_check(sock: nl.RtnlSocket, fake: FakeKernel) -> tuple[Kernel, Kernel]:
    return sock, fake  # mypy: both implement Kernel


def test_the_socket_and_the_fake_are_both_a_kernel() -> None:
    sock = nl.RtnlSocket()
    try:
        for impl in (sock, FakeKernel()):
            assert isinstance(impl, Kernel)
            for name in ("batch", "dump"):
                want = inspect.signature(getattr(Kernel, name))
                assert inspect.signature(getattr(type(impl), name)) == want, (impl, name)
    finally:
        sock.close()


NEIGH = nl.NeighKey(socket.AF_INET, 5, bytes([10, 244, 2, 0]))
FDB = nl.FdbKey(5, bytes.fromhex("0e0000000002"))


def test_the_fake_keeps_writes_and_replays_them_as_dumps() -> None:
    k = FakeKernel()
    assert k.batch([("neigh", nl.neigh_set(NEIGH, FDB.mac)),
                    ("fdb", nl.fdb_set(FDB, bytes([198, 51, 100, 12])))]) == []
    [(buf, off, end)] = [m for m in k.dump(nl.RTM_GETNEIGH,
                                           nl.neigh_dump_request(socket.AF_INET, 5))
                         if nl.parse_neigh(*m)[0] == socket.AF_INET]
    assert nl.parse_neigh(buf, off, end)[4:] == (NEIGH.dst, FDB.mac)
    [failure] = k.batch([("again", nl.neigh_del(NEIGH, FDB.mac)),
                         ("gone", nl.neigh_del(NEIGH, FDB.mac))])
    assert failure.entry == "gone" and failure.error.errno == errno.ENOENT
    assert k.requests == 4 and k.dumps == 1 and k.log == ["neigh", "fdb", "again", "gone"]


def test_every_call_can_be_made_to_fail() -> None:
    k = FakeKernel()
    k.fail = lambda entry: errno.EBUSY if entry == "b" else 0
    failures = k.batch([("a", nl.neigh_set(NEIGH, FDB.mac)),
                        ("b", nl.fdb_set(FDB, bytes(4)))])
    assert [(f.entry, f.error.errno) for f in failures] == [("b", errno.EBUSY)]

    k.batch_raises = OSError(errno.ENOBUFS, "No buffer space available")
    with pytest.raises(OSError):
        k.batch([("c", nl.neigh_del(NEIGH, FDB.mac))])
    k.batch_raises = None

    k.dump_raises = nl.NetlinkError(errno.EINTR, "dump 26", "interrupted five times")
    with pytest.raises(nl.NetlinkError):
        k.dump(nl.RTM_GETROUTE, nl.route_dump_request(socket.AF_INET))
    k.dump_raises = None

    k.dump_fails = {"nexthop": nl.NetlinkError(errno.EOPNOTSUPP, "dump 106"),
                    "fdb": OSError(errno.EIO, "Input/output error")}
    with pytest.raises(nl.NetlinkError):
        k.dump(nl.RTM_GETNEXTHOP, nl.nexthop_dump_request())
    with pytest.raises(OSError):
        k.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(nl.AF_BRIDGE, 5))
    assert k.dump(nl.RTM_GETNEIGH, nl.neigh_dump_request(socket.AF_INET, 5))  # not the FDB
    assert k.dump(nl.RTM_GETROUTE, nl.route_dump_request(socket.AF_INET)) == []
