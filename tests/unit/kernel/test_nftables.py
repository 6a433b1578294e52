"""OwnedTable and TableWatch, the mechanism behind the allow-list's and --ip-masq's tables: a
fake nft holds the tables as `nft -j` lists them, and notifications are handed to the watch as
its EventSocket would (the real kernel's are in tests/integration/kernel)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from vxnet.kernel import netlink as nl
from vxnet.kernel import nft
from vxnet.kernel.nftables import (
    FAMILIES,
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_NEWGEN,
    NFTA_GEN_PROC_PID,
    NFTA_TABLE,
    OwnedTable,
    TableWatch,
)

NFT_MSG_NEWRULE, NFT_MSG_DELTABLE = 6, 2


class FakeNft:
    """nft as a table runs it. A script line `rule X`, `set S` or `counter C` makes that
    object; every load replaces the table and numbers its objects anew, as the kernel does."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.scripts: list[str] = []
        self.refuse = ""  # the next loads fail with this error
        self.garbage = False  # listings are not JSON
        self.handles = 0

    async def __call__(self, *args: str, stdin: str | None = None,
                       netns: str | None = None) -> tuple[int, str, str]:
        if args == ("-f", "-"):
            assert stdin is not None
            return self._load(stdin)
        json_, (verb, kind, family, name, *_) = args[0] == "-j", args[args[0] == "-j":]
        assert verb == "list" and kind == "table"
        objs = self.tables.get((family, name))
        if objs is None:
            return 1, "", "Error: No such file or directory"
        if not json_:
            return 0, f"table {family} {name} {{ ... }}\n", ""
        doc = {"nftables": [{"metainfo": {"version": "1.0.6"}}, *objs]}
        return 0, "{not json" if self.garbage else json.dumps(doc), ""

    def _load(self, script: str) -> tuple[int, str, str]:
        self.scripts.append(script)
        if self.refuse:
            return 1, "", self.refuse
        family, name = script.splitlines()[0].split()[1:3]
        objs: list[dict[str, Any]] = [{"table": {"family": family, "name": name,
                                                 "handle": self._handle()}}]
        for line in script.splitlines()[1:]:
            kind, _, what = line.partition(" ")
            body: dict[str, Any] = {"name": what, "handle": self._handle()}
            extra: dict[str, dict[str, Any]] = {"set": {"elem": []},
                                                "counter": {"packets": 0, "bytes": 0}}
            body |= extra.get(kind, {})
            objs.append({kind: body})
        self.tables[(family, name)] = objs
        return 0, "", ""

    def _handle(self) -> int:
        self.handles += 1
        return self.handles

    def find(self, family: str, name: str, kind: str) -> dict[str, Any]:
        return next(o[kind] for o in self.tables[(family, name)] if kind in o)


SCRIPT = "table ip t\nrule accept\nset peers\ncounter refused\n"


@pytest.fixture
def fake() -> FakeNft:
    return FakeNft()


@pytest.fixture
def table(fake: FakeNft) -> OwnedTable:
    return OwnedTable("ip", "t", "the test rules", run=fake)


async def test_as_loaded_it_is_in_step_whatever_its_elements_and_counters(
        fake: FakeNft, table: OwnedTable) -> None:
    await table.load(SCRIPT)
    fake.find("ip", "t", "set")["elem"] = ["198.51.100.1"]  # the owner's to change
    fake.find("ip", "t", "counter").update(packets=12, bytes=1200)
    doc = await table.check(lambda: SCRIPT)
    assert doc is not None and fake.find("ip", "t", "counter") in \
        [o.get("counter") for o in doc["nftables"]]  # the listing is the owner's to read
    assert await table.in_step() and table.repairs == 0 and fake.scripts == [SCRIPT]


@pytest.mark.parametrize("tamper", ["delete the table", "change a rule", "add a rule"])
async def test_changed_or_gone_it_is_loaded_again_and_counted(
        fake: FakeNft, table: OwnedTable, tamper: str) -> None:
    await table.load(SCRIPT)
    if tamper == "delete the table":
        del fake.tables[("ip", "t")]
    elif tamper == "change a rule":
        fake.find("ip", "t", "rule")["name"] = "drop"
    else:
        fake.tables[("ip", "t")].append({"rule": {"name": "accept", "handle": 99}})
    assert not await table.in_step()
    assert await table.check(lambda: SCRIPT) is None
    assert table.repairs == 1 and fake.scripts == [SCRIPT, SCRIPT]
    assert await table.in_step()  # the shape learned again: new handles are ours
    assert await table.check(lambda: SCRIPT) is not None and table.repairs == 1


async def test_a_table_left_by_an_earlier_run_is_replaced_but_not_a_repair(
        fake: FakeNft, table: OwnedTable) -> None:
    fake._load("table ip t\nrule old\n")
    assert await table.exists() and not await table.in_step()  # its shape is not ours yet
    assert await table.check(lambda: SCRIPT) is None
    assert table.repairs == 0 and await table.in_step()


async def test_a_load_that_failed_is_retried_as_the_same_repair(
        fake: FakeNft, table: OwnedTable) -> None:
    await table.load(SCRIPT)
    del fake.tables[("ip", "t")]
    fake.refuse = "Error: Could not process rule"
    for _ in range(2):
        with pytest.raises(nft.NftError, match="the test rules: Error: Could not process rule"):
            await table.check(lambda: SCRIPT)
    assert table.repairs == 1 and not await table.in_step()
    fake.refuse = ""
    assert await table.check(lambda: SCRIPT) is None and table.repairs == 1
    assert await table.in_step()
    with pytest.raises(nft.NftError, match="the test peers"):
        fake.refuse = "Error: no"
        await table.apply("add element ip t peers { 1.2.3.4 }\n", "the test peers")


async def test_a_listing_that_is_not_json_is_an_error(fake: FakeNft, table: OwnedTable) -> None:
    await table.load(SCRIPT)
    fake.garbage = True
    with pytest.raises(nft.NftError, match="not JSON"):
        await table.check(lambda: SCRIPT)


# -- notifications ----------

OUR_PID, THEIR_PID = 4242, 777


def message(kind: int, family: int, *attrs: bytes) -> nl.Event:
    buf = struct.pack("!BBH", family, 0, 0) + b"".join(attrs)  # nfgenmsg, then attributes
    return NFNL_SUBSYS_NFTABLES << 8 | kind, buf, 0, len(buf)


def transaction(pid: int, *tables: tuple[str, str]) -> list[nl.Event]:
    """What one committed transaction notifies: its objects' messages, then NEWGEN."""
    return [*(message(NFT_MSG_NEWRULE, FAMILIES[f], nl.attr(NFTA_TABLE, n.encode() + b"\0"))
              for f, n in tables),
            message(NFT_MSG_NEWGEN, 0, nl.attr(NFTA_GEN_PROC_PID, struct.pack("!I", pid)))]


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> TableWatch:
    monkeypatch.setattr(nft, "ours", lambda pid: pid == OUR_PID)
    tables = [OwnedTable("ip", "vxnet", "masq"), OwnedTable("ip6", "vxnet", "masq6")]
    return TableWatch(lambda: tables)


async def test_someone_elses_transaction_on_our_table_is_a_change(watch: TableWatch) -> None:
    watch._notified(transaction(THEIR_PID, ("inet", "filter"), ("ip6", "vxnet")))
    assert await watch.wait(0) and watch.foreign == 1
    assert not await watch.wait(0)  # said once


@pytest.mark.parametrize("events", [
    transaction(OUR_PID, ("ip", "vxnet"), ("ip6", "vxnet")),  # ours
    transaction(THEIR_PID, ("inet", "vxnet"), ("ip", "other")),  # not our tables
    [message(NFT_MSG_DELTABLE, FAMILIES["ip"], nl.attr(NFTA_TABLE, b"vxnet\0")),
     *transaction(OUR_PID)],  # ours, the table in a datagram of its own
], ids=["our own transaction", "others' tables", "our transaction across batches"])
async def test_no_change_but_ours_or_on_others_tables(watch: TableWatch,
                                                      events: list[nl.Event]) -> None:
    for ev in events:  # one batch each: a transaction may span datagrams
        watch._notified([ev])
    assert not await watch.wait(0) and watch.foreign == 0


async def test_lost_notifications_are_a_change_and_a_poke_is_not(watch: TableWatch) -> None:
    watch.poke()
    assert not await watch.wait(5)  # returns at once, with nothing changed
    watch._notified(transaction(THEIR_PID, ("ip", "vxnet"))[:1])  # ... and the rest lost
    watch._lost(OSError(105, "No buffer space available"))
    watch._notified(transaction(OUR_PID))  # the NEWGEN of what was cut off does not count
    assert await watch.wait(5) and watch.foreign == 0
