"""--ip-masq's tables against the real nftables of a namespace of their own: changed or deleted
by hand, they are put back at once (on the notification, not the timer), and counted."""

import asyncio
import ipaddress as ipa

import pytest

from tests.waiting import SOON, until
from vxnet.kernel.masq import TABLE, MasqRules, Masquerade

pytestmark = pytest.mark.netns

NET4, NET6 = ipa.ip_network("10.244.0.0/16"), ipa.ip_network("fd00:10:244::/48")


def rules(index: int) -> list[MasqRules]:
    return [MasqRules(NET4, ipa.ip_network(f"10.244.{index}.0/24")),
            MasqRules(NET6, ipa.ip_network(f"fd00:10:244:{index}::/64"))]


def listing(ns, family: str) -> str:
    return ns.run("nft", "list", "table", family, TABLE, check=False).stdout


async def test_tables_changed_or_deleted_by_hand_are_put_back_at_once(ns):
    masq = Masquerade(rules(1), netns=ns.name)
    await masq.apply()
    loaded = {f: listing(ns, f) for f in ("ip", "ip6")}
    assert "10.244.1.0/24" in loaded["ip"] and "fd00:10:244:1::/64" in loaded["ip6"]
    assert await masq.in_step()
    task = asyncio.create_task(masq.keep(interval=3600))  # the timer never comes into it
    try:
        await until(lambda: masq.watch.is_open, SOON, "the watch open")
        tampering = [("delete", "table", "ip", TABLE),
                     ("flush", "chain", "ip6", TABLE, "postrouting"),
                     ("insert", "rule", "ip", TABLE, "postrouting", "accept"),
                     ("delete", "table", "ip6", TABLE)]
        for n, tamper in enumerate(tampering, 1):
            family = tamper[2]
            ns.run("nft", *tamper)
            assert listing(ns, family) != loaded[family]
            # in step: back, and the repair done (it learns what it loaded before the next)
            await until(masq.in_step, SOON, f"{family} rules back after {' '.join(tamper[:2])}")
            assert listing(ns, family) == loaded[family]
            assert masq.repairs == n and masq.watch.foreign == n

        # the lease moved: our own transactions are not taken for someone else's
        masq.rules = rules(2)
        await masq.apply()
        assert "10.244.2.0/24" in listing(ns, "ip") and await masq.in_step()
        ns.run("nft", "delete", "table", "ip", TABLE)  # notified after our own, in order
        await until(masq.in_step, SOON, "the new rules back")
        assert "10.244.2.0/24" in listing(ns, "ip")
        assert masq.repairs == 5 and masq.watch.foreign == 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not masq.watch.is_open


async def test_what_no_notification_said_is_put_back_by_a_check(ns):
    masq = Masquerade(rules(1)[:1], netns=ns.name)
    await masq.apply()
    loaded = listing(ns, "ip")
    ns.run("nft", "delete", "table", "ip", TABLE)  # before keep() listens
    task = asyncio.create_task(masq.keep(interval=0.2))
    try:
        await until(masq.in_step, SOON, "the rules back by the first check")
        assert listing(ns, "ip") == loaded and masq.repairs == 1
        masq.watch.close()  # deaf from now on: only the timer is left
        ns.run("nft", "delete", "table", "ip", TABLE)
        await until(masq.in_step, SOON, "the rules back by a check on the timer")
        assert listing(ns, "ip") == loaded and masq.repairs == 2
        assert masq.watch.foreign == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
