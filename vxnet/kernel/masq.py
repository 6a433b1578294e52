"""--ip-masq: flannel's masquerade semantics as nftables rules in tables vxnet owns (`ip vxnet`,
`ip6 vxnet`). Pod traffic leaving the cluster network is masqueraded; pod-to-pod traffic keeps
pod addresses; packets kube-proxy marked (0x4000) are left to kube-proxy. Each table is an
OwnedTable (nftables.py): replaced in one nft transaction, so there is never a moment without
rules, and put back as soon as someone else changes or deletes it (nftables notifications, a
TableWatch), with a full check on a timer as a backstop."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import IPNetwork
from vxnet.kernel.nftables import OwnedTable, TableWatch

log = logging.getLogger(__name__)
TABLE = "vxnet"


@dataclass(frozen=True, slots=True)
class MasqRules:
    network: IPNetwork  # the cluster network
    local: IPNetwork  # this node's pod subnet

    @property
    def family(self) -> str:
        return "ip" if self.network.version == 4 else "ip6"

    def script(self) -> str:
        f, net, local = self.family, self.network, self.local
        mcast = "224.0.0.0/4" if f == "ip" else "ff00::/8"
        # "add" then "delete" makes the delete safe when the table is absent; nft -f applies
        # the whole script as one transaction
        return f"""add table {f} {TABLE}
delete table {f} {TABLE}
table {f} {TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x4000 == 0x4000 return comment "kube-proxy masquerades these"
    {f} saddr {net} {f} daddr {net} return comment "pod to pod keeps pod addresses"
    {f} saddr {net} {f} daddr != {mcast} masquerade fully-random comment "pods leaving the network"
    {f} saddr != {net} {f} daddr {local} return comment "to this node's own pods"
    {f} saddr != {net} {f} daddr {net} masquerade fully-random comment "hosts to remote pods"
  }}
}}
"""


class Masquerade:
    def __init__(self, rules: list[MasqRules], *, netns: str | None = None) -> None:
        self.rules = rules  # what apply() loads; the agent sets them when its lease moves
        self.netns = netns
        self._tables: dict[str, OwnedTable] = {}  # by family, as the rules first need them
        self.watch = TableWatch(self._tables.values, netns=netns)

    @property
    def repairs(self) -> int:
        """Tables found changed or removed by someone else, and put back."""
        return sum(t.repairs for t in self._tables.values())

    def _table(self, r: MasqRules) -> OwnedTable:
        t = self._tables.get(r.family)
        if t is None:
            t = self._tables[r.family] = OwnedTable(
                r.family, TABLE, f"the --ip-masq {r.family} rules", netns=self.netns)
        return t

    async def apply(self) -> None:
        for r in self.rules:
            await self._table(r).load(r.script())

    async def in_step(self) -> bool:
        for r in self.rules:
            if not await self._table(r).in_step():
                return False
        return True

    async def keep(self, interval: float) -> None:
        """Put the tables back whenever they differ from what was loaded: checked at once when
        someone else's transaction touched them, and every `interval` seconds."""
        with self.watch:  # before the first check: no change after it goes unseen
            while True:
                try:
                    for r in self.rules:
                        await self._table(r).check(r.script)
                except VxnetError as e:
                    log.error("%s", e)
                await self.watch.wait(interval)
