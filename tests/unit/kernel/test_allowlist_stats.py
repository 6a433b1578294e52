"""Which sources the allow-list refused lately: a source counts while its packets keep being
refused, not for the hour the kernel's set remembers it."""

from vxnet.kernel import allowlist
from vxnet.kernel.allowlist import AllowList


def listing(**packets: int) -> dict:
    elems = [{"elem": {"val": src.replace("_", "."), "counter": {"packets": n}}}
             for src, n in packets.items()]
    return {"nftables": [{"set": {"name": "refused4", "elem": elems}}]}


def test_refused_lately_follows_the_counts_not_the_set(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(allowlist.time, "monotonic", lambda: now[0])
    allow = AllowList(8472, set)
    allow._read_stats(listing(**{"198_51_100_12": 3}))
    assert allow.refused_lately(120) == {"198.51.100.12"}
    now[0] += 300  # five minutes on: still in the set, no new packets
    allow._read_stats(listing(**{"198_51_100_12": 3, "198_51_100_13": 1}))
    assert allow.refused_lately(120) == {"198.51.100.13"}
    now[0] += 10
    allow._read_stats(listing(**{"198_51_100_12": 4, "198_51_100_13": 1}))
    assert allow.refused_lately(120) == {"198.51.100.12", "198.51.100.13"}
    allow._read_stats(listing())  # the set emptied (timeouts)
    assert allow.refused_lately(3600) == frozenset()
