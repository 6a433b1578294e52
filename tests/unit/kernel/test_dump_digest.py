"""A dump's digest by datagrams: blind to the sequence numbers and the neighbours' cache ages,
sensitive to every other byte, whichever way a datagram is digested (strided slices when its
messages are all alike, message by message otherwise)."""

import struct

from vxnet.kernel import netlink as nl
from vxnet.kernel.table import dump_digest

CACHEINFO = struct.pack("=HH", 20, nl.NDA_CACHEINFO)


def message(seq: int, payload: bytes, mtype: int = nl.RTM_NEWNEIGH) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), mtype, nl.NLM_F_MULTI, seq, 77) + payload


def neigh(i: int, age: int = 0) -> bytes:
    """An ndmsg, an NDA_DST and the cache ages last: 52 bytes, as the kernel's are alike."""
    return (struct.pack("=BxxxiHBB", 2, 5, 0x80, 0, 1) + struct.pack("=HH", 8, nl.NDA_DST)
            + bytes([10, 244, i >> 8, i & 255]) + CACHEINFO + struct.pack("=4I", age, age, age, 1))


def dump(seq: int, payloads: list[bytes], per: int = 3) -> nl.Dump:
    msgs = [message(seq, p) for p in payloads]
    return nl.Dump([b"".join(msgs[i:i + per]) for i in range(0, len(msgs), per)])


def test_datagrams_of_like_messages_are_recognised():
    d = dump(9, [neigh(i) for i in range(6)])
    assert all(nl.uniform(g) == 16 + len(neigh(0)) for g in d.datagrams)
    mixed = message(9, neigh(1)) + message(9, neigh(2)[:-4])
    assert nl.uniform(mixed) == 0
    assert nl.uniform(message(9, neigh(1)) + message(9, neigh(2), nl.RTM_NEWROUTE)) == 0


def test_the_walk_gives_every_message_once():
    d = dump(9, [neigh(i) for i in range(7)])
    assert [bytes(buf[off:end]) for buf, off, end in d] == [neigh(i) for i in range(7)]
    assert list(d) == list(d)  # iterable again: digested, then parsed


def test_sequence_numbers_and_cache_ages_do_not_count_anything_else_does():
    entries = [neigh(i) for i in range(7)]
    first = dump_digest(dump(9, entries), strip_cacheinfo=True)
    assert dump_digest(dump(10, entries), strip_cacheinfo=True) == first
    aged = [neigh(i, age=500) for i in range(7)]
    assert dump_digest(dump(11, aged), strip_cacheinfo=True) == first
    assert dump_digest(dump(11, aged)) != dump_digest(dump(9, entries))  # not stripped: counts
    changed = list(entries)
    changed[4] = neigh(99)
    assert dump_digest(dump(12, changed), strip_cacheinfo=True) != first
    assert dump_digest(dump(12, entries[:-1]), strip_cacheinfo=True) != first


def test_a_datagram_of_unlike_messages_is_digested_message_by_message():
    entries = [neigh(1), neigh(2)[:-20], neigh(3)]  # one without cache ages
    a = nl.Dump([b"".join(message(9, p) for p in entries)])
    b = nl.Dump([b"".join(message(10, p) for p in entries)])
    assert nl.uniform(a.datagrams[0]) == 0
    assert dump_digest(a, strip_cacheinfo=True) == dump_digest(b, strip_cacheinfo=True)
    c = nl.Dump([b"".join(message(10, p) for p in [neigh(1), neigh(5)[:-20], neigh(3)])])
    assert dump_digest(c, strip_cacheinfo=True) != dump_digest(a, strip_cacheinfo=True)
