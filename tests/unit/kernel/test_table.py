"""The delta table: plans only differences, and its cache follows success only."""

import errno
from collections.abc import Sequence

from vxnet.kernel.netlink import Failure
from vxnet.kernel.table import DeltaTable, PassResult


class Table(DeltaTable[str, int]):
    SET, DEL = (1, 0), (2, 0)

    def encode_set(self, key: str, value: int) -> bytes:
        return f"{key}={value}".encode()

    def encode_del(self, key: str, value: int) -> bytes:
        return f"{key}".encode()


class Kernel:
    """Takes every batch; `fail` names the bodies to refuse and with which errno."""

    def __init__(self) -> None:
        self.fail: dict[bytes, int] = {}
        self.sent: list[bytes] = []

    def batch(self, mtype: int, flags: int, bodies: Sequence[bytes]) -> list[Failure]:
        self.sent += bodies
        return [Failure(i, self.fail[b]) for i, b in enumerate(bodies) if b in self.fail]

    def dump(self, mtype: int, body: bytes) -> list[tuple[bytes, int, int]]:
        return []


def table():
    return Table("t")


def want(t, desired):
    for k, v in desired.items():
        t.set_desired(k, v)


def plan(t):
    sets, dels = t.plan()
    return sorted((k, t.desired(k)) for k in sets), sorted((k, t.in_kernel(k)) for k in dels)


def write(t, kernel=None):
    """One pass: sets, then deletes; the result."""
    kernel = kernel or Kernel()
    result = PassResult()
    sets, dels = t.plan()
    for keys, delete in ((sets, False), (dels, True)):
        if keys:
            t.write(kernel, keys, delete, result)
    return result


def test_plan_is_the_difference_only():
    t = table()
    t.load_kernel({"a": 1, "b": 2, "stale": 9})
    want(t, {"a": 1, "b": 3, "c": 4})
    assert plan(t) == ([("b", 3), ("c", 4)], [("stale", 9)])
    assert set(t.pending_keys()) == {"b", "c", "stale"}  # "a" is in step and cleaned


def test_work_planned_but_never_done_is_planned_again():
    t = table()
    want(t, {"a": 1, "b": 2})
    t.plan()  # ... and the batch carrying them raised before any answer
    assert plan(t) == ([("a", 1), ("b", 2)], [])
    write(t)
    assert plan(t) == ([], []) and not t.pending


def test_a_desire_changed_while_its_write_was_in_flight_stays_dirty():
    t = table()
    want(t, {"a": 1, "b": 2})
    sets, _ = t.plan()

    class Meanwhile(Kernel):
        def batch(self, mtype, flags, bodies):
            t.set_desired("a", 9)  # while the batch was out
            return super().batch(mtype, flags, bodies)

    t.write(Meanwhile(), sets, False, PassResult())
    assert set(t.pending_keys()) == {"a"} and dict(t.kernel_items()) == {"a": 1, "b": 2}
    assert plan(t) == ([("a", 9)], [])


def test_the_cache_follows_success_and_failures_stay_dirty_logged_once():
    t = table()
    want(t, {"a": 1, "b": 2})
    k = Kernel()
    k.fail = {b"a=1": errno.EBUSY}
    result = write(t, k)
    assert dict(t.kernel_items()) == {"b": 2} and set(t.pending_keys()) == {"a"}
    assert result.writes == {"t": 1} and len(result.failures) == 1
    assert "set t a" in result.failures[0] and t.failing == 1
    k.fail = {}
    write(t, k)
    assert dict(t.kernel_items()) == {"a": 1, "b": 2} and t.writes == 2 and not t.drift()
    assert t.failing == 0 and not t.pending


def test_deleting_what_is_already_gone_is_success():
    t = table()
    t.load_kernel({"a": 1})
    k = Kernel()
    k.fail = {b"a": errno.ENOENT}
    assert write(t, k).writes == {"t": 1}
    assert dict(t.kernel_items()) == {} and not t.pending


def test_kernel_changed_only_dirties_on_real_change():
    t = table()
    t.load_kernel({"a": 1})
    t.set_desired("a", 1)
    assert plan(t) == ([], [])
    t.kernel_changed("a", 1)
    assert not t.pending
    t.kernel_changed("a", 2)
    assert plan(t) == ([("a", 1)], [])
    t.kernel_changed("zzz", None)
    assert set(t.pending_keys()) == {"a"}  # still to be written; nothing new


def test_setting_the_same_value_is_not_work():
    t = table()
    t.load_kernel({"a": 0})
    t.set_desired("a", 0)
    t.plan()
    t.set_desired("a", 0)
    t.delete_desired("missing")
    assert not t.pending


def test_a_dump_equal_to_desire_keeps_desire_s_objects_not_copies():
    t = DeltaTable[bytes, bytes]("t")
    key, value = bytes([1, 2]) * 8, bytes([3]) * 8
    t.set_desired(key, value)
    t.load_kernel({bytes([1, 2]) * 8: bytes([3]) * 8})  # equal, but other objects
    (k, v), = t.kernel_items()
    assert k is key and v is value and t._kernel is not t._desired
    t.delete_desired(key)  # the two stay separate dicts
    assert dict(t.kernel_items()) == {key: value}


def test_a_bulk_write_records_as_writing_one_by_one():
    bulk, each = table(), table()
    for t in (bulk, each):
        t.load_kernel({"gone": 1, "old": 2})
        want(t, {"a": 1, "b": 2, "old": 3})
    write(bulk)
    k = Kernel()
    k.fail = {b"b=2": errno.EBUSY}  # takes each one by one
    write(each, k)
    k.fail = {}
    write(each, k)
    assert dict(bulk.kernel_items()) == dict(each.kernel_items()) == {"a": 1, "b": 2, "old": 3}
    assert bulk.writes == each.writes == 4 and not bulk.pending and not each.pending
