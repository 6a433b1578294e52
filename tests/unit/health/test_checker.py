"""Peer health logic with a fake pinger: the diagnosis table, the schedule spreading probes
over the interval, MTU probes every few rounds, and a probe that cannot run never stopping
the checker."""

import asyncio
import ipaddress as ipa

from tests.waiting import until
from vxnet.health.checker import (
    LOG_PER_MINUTE,
    MTU_EVERY,
    HealthChecker,
    Target,
    TargetView,
    diagnose,
)
from vxnet.health.pinger import Reply

T = Target("ipv4 p2", ipa.ip_address("10.244.2.0"), ipa.ip_address("198.51.100.2"), 1450, 8472)
OK = Reply(0.001, T.public_ip)


def test_the_diagnosis_table():
    assert diagnose(T, OK, OK, True) == ("healthy", None, None)
    assert diagnose(T, OK, OK, None) == ("healthy", None, None)  # full size not checked yet
    assert diagnose(T, None, OK, None)[2].startswith("overlay blocked, underlay fine: VXLAN "
                                                     "(UDP 8472)")
    assert diagnose(T, None, None, None)[2].startswith("underlay unreachable")
    assert "this node's VXLAN allow-list drops the peer's packets" in \
        diagnose(T, None, OK, None, refused_here=True)[2]
    assert diagnose(T, OK, OK, False)[2].startswith("MTU: small packets pass")
    causes = [diagnose(T, None, OK, None)[1], diagnose(T, None, None, None)[1],
              diagnose(T, None, OK, None, True)[1], diagnose(T, OK, OK, False)[1]]
    assert causes == ["overlay_blocked", "underlay_unreachable", "allowlist_refused", "mtu"]
    elsewhere = Reply(0.001, ipa.ip_address("198.51.100.99"))
    assert "answers from 198.51.100.99, not from its lease's address 198.51.100.2" in \
        diagnose(T, OK, elsewhere, True)[2]


class FakePinger:
    def __init__(self, version, answers):
        self.answers, self.sent = answers, []

    async def echo(self, dst, size=64, timeout=2.0):
        self.sent.append((str(dst), size))
        return self.answers(str(dst), size)

    def close(self):
        pass


def target(i):
    return Target(f"ipv4 p{i}", ipa.ip_address(f"10.244.{i}.0"),
                  ipa.ip_address(f"198.51.100.{i}"), 1450, 8472)


def targets(n):
    """A view that names no change: the checker compares it in full."""
    return TargetView({t.key: t for t in map(target, range(2, 2 + n))}, None)


async def run_for(checker, seconds):
    task = asyncio.ensure_future(checker.run())
    await asyncio.sleep(seconds)  # what is tested is a schedule over time: run it until then
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_every_peer_is_probed_once_per_interval_spread_over_it():
    fakes = []

    def make(version):
        fakes.append(FakePinger(version, lambda dst, size: Reply(0.001, ipa.ip_address(dst))))
        return fakes[-1]

    checker = HealthChecker(lambda: targets(20), 0.4, pinger=make)
    await run_for(checker, 0.3)
    assert 0 < len(checker.peers) == 20 and 0 < checker.counts()["healthy"] < 20  # spread
    await run_for(checker, 0.5)
    assert checker.counts() == {"healthy": 20}
    sizes = [size for _, size in fakes[-1].sent]
    assert sizes.count(1450) <= 20  # full-size probes only every few rounds


async def test_verdicts_follow_the_results_and_mtu_is_rechecked_until_it_passes():
    state = {"overlay": True, "big": False}

    def answers(dst, size):
        if dst.startswith("10.") and (not state["overlay"] or (size > 64 and not state["big"])):
            return None
        return Reply(0.001, ipa.ip_address(dst))

    checker = HealthChecker(lambda: targets(1), 0.1, pinger=lambda v: FakePinger(v, answers))
    await run_for(checker, 0.25)
    [peer] = checker.peers.values()
    assert peer.diagnosis.startswith("MTU")
    state["big"] = True
    await run_for(checker, 0.25)
    assert peer.state == "healthy" and peer.rounds > MTU_EVERY // 2
    state["overlay"] = False
    await run_for(checker, 0.25)
    assert peer.diagnosis.startswith("overlay blocked")


async def test_a_probe_that_cannot_run_is_counted_and_the_checker_goes_on():
    def no_raw_sockets(version):
        raise PermissionError(1, "Operation not permitted")

    checker = HealthChecker(lambda: targets(3), 0.1, pinger=no_raw_sockets)
    await run_for(checker, 0.3)
    assert sum(checker.errors.values()) >= 3 and checker.counts() == {"unknown": 3}


async def test_many_peers_going_down_at_once_do_not_flood_the_log(caplog):
    checker = HealthChecker(lambda: targets(100), 0.2,
                            pinger=lambda v: FakePinger(v, lambda dst, size: None))
    task = asyncio.ensure_future(checker.run())
    try:
        await until(lambda: checker.counts().get("unhealthy") == 100, 10, "every verdict")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert checker.counts() == {"unhealthy": 100}
    one_by_one = [r for r in caplog.records if r.getMessage().startswith("peer ipv4 ")]
    assert len(one_by_one) == LOG_PER_MINUTE
    checker._log_window -= 61  # a minute later
    checker._roll_log_window()
    assert caplog.records[-1].getMessage().startswith(
        f"{100 - LOG_PER_MINUTE} more peer state changes in the last minute")


async def test_peers_follow_the_changes_a_view_names():
    live = {t.key: t for t in map(target, range(2, 5))}
    views = [TargetView(live, None)]

    def next_view():
        return views.pop(0) if views else TargetView(live, [])

    checker = HealthChecker(next_view, 0.1,
                            pinger=lambda v: FakePinger(v, lambda dst, size: None))
    task = asyncio.ensure_future(checker.run())
    try:
        await until(lambda: set(checker.peers) == {"ipv4 p2", "ipv4 p3", "ipv4 p4"}, 5,
                    "the first view")
        del live["ipv4 p3"]
        live["ipv4 p9"] = target(9)
        moved = live["ipv4 p2"] = Target("ipv4 p2", ipa.ip_address("10.244.2.0"),
                                         ipa.ip_address("198.51.100.99"), 1450, 8472)
        views.append(TargetView(live, ["ipv4 p3", "ipv4 p9", "ipv4 p2"]))
        await until(lambda: set(checker.peers) == {"ipv4 p2", "ipv4 p4", "ipv4 p9"}, 5,
                    "the changes")
        assert checker.peers["ipv4 p2"].target is moved
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_source_our_allow_list_refused_is_named_in_the_verdict():
    def overlay_dropped(dst, size):
        return None if dst.startswith("10.") else Reply(0.001, ipa.ip_address(dst))

    one = target(2)
    checker = HealthChecker(lambda: TargetView({one.key: one}, None,
                                               frozenset({one.public_ip})), 0.1,
                            pinger=lambda v: FakePinger(v, overlay_dropped))
    task = asyncio.ensure_future(checker.run())
    try:
        await until(lambda: checker.peers.get(one.key) is not None
                    and checker.peers[one.key].cause == "allowlist_refused", 5, "the verdict")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
