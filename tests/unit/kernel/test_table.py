from vxnet.kernel.table import DeltaTable


def table():
    return DeltaTable("t", lambda k, v: (1, 0, b""), lambda k, v: (2, 0, b""))


def want(t, desired):
    for k, v in desired.items():
        t.set_desired(k, v)


def plan(t):
    sets, dels = t.plan()
    return sorted((o.key, o.value) for o in sets), sorted((o.key, o.value) for o in dels)


def test_plan_is_the_difference_only():
    t = table()
    t.load_kernel({"a": 1, "b": 2, "stale": 9})
    want(t, {"a": 1, "b": 3, "c": 4})
    assert plan(t) == ([("b", 3), ("c", 4)], [("stale", 9)])
    assert set(t.pending_keys()) == {"b", "c", "stale"}  # "a" is in step and cleaned


def test_work_planned_but_never_done_is_planned_again():
    t = table()
    want(t, {"a": 1, "b": 2})
    sets, _ = t.plan()  # ... and the batch carrying them raised before any answer
    assert plan(t) == ([("a", 1), ("b", 2)], [])
    for op in sets:
        t.record(op, ok=True)
    assert plan(t) == ([], []) and not t.pending


def test_a_desire_changed_while_its_write_was_in_flight_stays_dirty():
    t = table()
    t.set_desired("a", 1)
    sets, _ = t.plan()
    t.set_desired("a", 2)
    t.record(sets[0], ok=True)
    assert dict(t.kernel_items()) == {"a": 1} and plan(t) == ([("a", 2)], [])


def test_record_follows_success_and_keeps_failures_dirty():
    t = table()
    t.set_desired("a", 1)
    sets, _ = t.plan()
    t.record(sets[0], ok=False)
    assert dict(t.kernel_items()) == {} and set(t.pending_keys()) == {"a"}
    sets, _ = t.plan()
    t.record(sets[0], ok=True)
    assert dict(t.kernel_items()) == {"a": 1} and t.writes == 1 and not t.drift()


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
    t = table()
    key, value = ("k", bytes([1, 2])), ("v", bytes([3]))
    want(t, {key: value})
    dumped = {("k", bytes([1, 2])): ("v", bytes([3]))}  # equal, but other objects
    t.load_kernel(dumped)
    (k, v), = t.kernel_items()
    assert k is key and v is value and t._kernel is not t._desired
    t.delete_desired(key)  # the two stay separate dicts
    assert dict(t.kernel_items()) == {key: value}


def test_recording_a_whole_batch_is_recording_each_op():
    bulk, each = table(), table()
    for t in (bulk, each):
        t.load_kernel({"gone": 1, "old": 2})
        want(t, {"a": 1, "b": 2, "old": 3})
    for deleting in (False, True):
        sets, dels = bulk.plan()
        ops = dels if deleting else sets
        bulk.record_all(ops)
        sets, dels = each.plan()
        for op in dels if deleting else sets:
            each.record(op, ok=True)
    assert [(dict(x.kernel_items()), set(x.pending_keys()), x.writes) for x in (bulk, each)] == \
        [(dict(each.kernel_items()), set(each.pending_keys()), each.writes)] * 2
    assert dict(bulk.kernel_items()) == {"a": 1, "b": 2, "old": 3} and not bulk.pending


def test_a_desire_changed_during_a_bulk_write_stays_dirty():
    t = table()
    want(t, {"a": 1, "b": 2})
    sets, _ = t.plan()
    t.set_desired("a", 9)  # while the batch was out
    t.record_all(sets)
    assert set(t.pending_keys()) == {"a"} and dict(t.kernel_items()) == {"a": 1, "b": 2}
