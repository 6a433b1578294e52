"""The VXLAN allow-list against the real nftables of a namespace of its own."""

import asyncio
import ipaddress as ipa

import pytest

from tests.waiting import until
from vxnet.kernel.allowlist import TABLE, AllowList

pytestmark = pytest.mark.netns


def elements(ns, name="peers4") -> set:
    out = ns.run("nft", "list", "set", "inet", TABLE, name, check=False).stdout
    inside = out.partition("elements = {")[2].partition("}")[0]
    return {ipa.ip_address(x.strip()) for x in inside.replace("\n", " ").split(",") if x.strip()}


async def test_follows_peers_and_undoes_others_changes_but_not_ours(ns):
    peers = {ipa.ip_address("198.51.100.12"), ipa.ip_address("2001:db8:100::12")}
    allow = AllowList(8472, lambda: set(peers), netns=ns.name)
    await allow.ensure_table()
    assert elements(ns) == set()  # in place, empty: nothing gets in before we know the peers
    await allow.sync(full=True)
    assert elements(ns) | elements(ns, "peers6") == peers
    task = asyncio.create_task(allow.run(interval=60))
    try:
        peers.add(ipa.ip_address("198.51.100.13"))
        peers.discard(ipa.ip_address("198.51.100.12"))
        allow.changed()
        await until(lambda: elements(ns) == {ipa.ip_address("198.51.100.13")})
        # someone else's nft (ours would be recognised as ours)
        ns.run("nft", "add", "element", "inet", TABLE, "peers4", "{ 203.0.113.66 }")
        await until(lambda: ipa.ip_address("203.0.113.66") not in elements(ns))
        # notifications arrive in order: those of our own transaction above were read before
        # this one's, and only this one was taken for tampering
        assert allow.watch.foreign == 1 and allow.repairs == 1
        ns.run("nft", "delete", "table", "inet", TABLE)
        await until(lambda: elements(ns) == {ipa.ip_address("198.51.100.13")})
        assert allow.repairs == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restart_keeps_the_old_table_until_it_has_its_peers(ns):
    old = AllowList(8472, lambda: {ipa.ip_address("198.51.100.12")}, netns=ns.name)
    await old.ensure_table()
    await old.sync(full=True)
    new = AllowList(8472, lambda: {ipa.ip_address("198.51.100.14")}, netns=ns.name)
    await new.ensure_table()
    assert elements(ns) == {ipa.ip_address("198.51.100.12")}  # untouched
    await new.sync(full=True)
    assert elements(ns) == {ipa.ip_address("198.51.100.14")}


async def test_while_start_up_knows_part_of_the_peers_nobody_loses_their_way_in(ns):
    a, b, c = (ipa.ip_address(f"198.51.100.{i}") for i in (12, 13, 14))
    old = AllowList(8472, lambda: {a, b}, netns=ns.name)
    await old.ensure_table()
    await old.sync(full=True)
    known = {c}  # the restarted agent's first page of the listing
    new = AllowList(8472, lambda: set(known), netns=ns.name)
    await new.ensure_table()
    await new.sync(full=True, keep_extra=True)  # the old table's shape is not ours: reloaded
    assert elements(ns) == {a, b, c}
    known.add(a)  # the next page
    await new.sync(keep_extra=True)
    assert elements(ns) == {a, b, c}
    await new.sync()  # the listing is complete: b is no peer any more
    assert elements(ns) == {a, c} and new.repairs == 0
