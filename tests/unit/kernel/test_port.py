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


DEV = 5
DST = bytes([10, 244, 2, 0])
MAC = bytes.fromhex("0e0000000002")


def test_the_fake_keeps_writes_and_replays_them_as_dumps() -> None:
    k = FakeKernel()
    assert k.batch(nl.RTM_NEWNEIGH, 0, [nl.neigh_body(socket.AF_INET, DEV, DST, MAC),
                                        nl.fdb_body(DEV, MAC, bytes([198, 51, 100, 12]))]) == []
    [(buf, off, end)] = [m for m in k.dump(nl.RTM_GETNEIGH,
                                           nl.neigh_dump_request(socket.AF_INET, DEV))
                         if nl.parse_neigh(*m)[0] == socket.AF_INET]
    assert nl.parse_neigh(buf, off, end)[4:] == (DST, MAC)
    gone = nl.neigh_del_body(socket.AF_INET, DEV, DST)
    [failure] = k.batch(nl.RTM_DELNEIGH, 0, [gone, gone])
    assert failure.index == 1 and failure.errno == errno.ENOENT
    assert k.requests == 4 and k.dumps == 1
    assert k.log == ["set neigh 10.244.2.0", "set fdb 0e:00:00:00:00:02",
                     "delete neigh 10.244.2.0", "delete neigh 10.244.2.0"]


def test_every_call_can_be_made_to_fail() -> None:
    k = FakeKernel()
    k.fail = lambda what: errno.EBUSY if what.startswith("set fdb") else 0
    failures = k.batch(nl.RTM_NEWNEIGH, 0, [nl.neigh_body(socket.AF_INET, DEV, DST, MAC),
                                            nl.fdb_body(DEV, MAC, bytes(4))])
    assert [(f.index, f.errno) for f in failures] == [(1, errno.EBUSY)]

    k.batch_raises = OSError(errno.ENOBUFS, "No buffer space available")
    with pytest.raises(OSError):
        k.batch(nl.RTM_DELNEIGH, 0, [nl.neigh_del_body(socket.AF_INET, DEV, DST)])
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
