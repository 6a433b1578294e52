"""--ip-masq: flannel's masquerade semantics as nftables rules in tables vxnet owns (`ip vxnet`,
`ip6 vxnet`). Pod traffic leaving the cluster network is masqueraded; pod-to-pod traffic keeps
pod addresses; packets kube-proxy marked (0x4000) are left to kube-proxy. Each table is replaced
in one nft transaction, so there is never a moment without rules, and re-applied when it drifts
(someone flushed or deleted it)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import IPNetwork
from vxnet.kernel.nft import load, nft

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
    def __init__(self, rules: list[MasqRules]) -> None:
        self.rules = rules
        self.repairs = 0
        self._expected: dict[str, str] = {}

    async def apply(self) -> None:
        for r in self.rules:
            await load(r.script(), f"the --ip-masq {r.family} rules")
            self._expected[r.family] = await self._listing(r.family)

    async def _listing(self, family: str) -> str:
        rc, out, _ = await nft("list", "table", family, TABLE)
        return out if rc == 0 else ""

    async def in_step(self) -> bool:
        for r in self.rules:
            if await self._listing(r.family) != self._expected.get(r.family):
                return False
        return True

    async def keep(self, interval: float) -> None:
        """Re-apply whenever the tables differ from what was loaded."""
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.in_step():
                    log.warning("masquerade rules changed or removed: re-applying")
                    await self.apply()
                    self.repairs += 1
            except VxnetError as e:
                log.error("%s", e)
