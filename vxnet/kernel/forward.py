"""--iptables-forward-rules (on by default, as flanneld's): the cluster network accepted in the
filter table's FORWARD chain, so that pods reach each other on hosts whose FORWARD policy is
DROP (Docker sets it when it turns forwarding on itself; ufw and firewalld default to it).

Why iptables, in a project that otherwise speaks nftables: an nftables `accept` ends only the
base chain it is in, and a drop in any other table at the same hook is final. The DROP sits in
iptables' filter table, so the accept must sit in that chain too, written by the iptables the
host uses: its nf_tables or its legacy backend, the one whose tables hold more rules (as
Kubernetes' iptables-wrapper chooses).

The rules are flanneld's FLANNEL-FWD under vxnet's name: a chain VXNET-FWD accepting the
network as source and as destination, jumped to from the end of FORWARD. The chain is replaced
whole by one iptables-restore (declaring a chain flushes it) and put back when found changed:
at once when someone else's nf_tables transaction touched the filter table, and on a timer
(the legacy backend sends no notifications)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from vxnet.errors import VxnetError
from vxnet.ip import IPNetwork
from vxnet.kernel import nft
from vxnet.kernel.nftables import NamedTable, Runner, TableWatch

log = logging.getLogger(__name__)
CHAIN = "VXNET-FWD"
COMMENT = "vxnet forward"
JUMP = ("FORWARD", "-m", "comment", "--comment", COMMENT, "-j", CHAIN)
WAIT = ("-w", "5")  # seconds for the xtables lock another iptables may hold


@dataclass(frozen=True, slots=True)
class ForwardRules:
    network: IPNetwork  # the cluster network of one family

    @property
    def family(self) -> str:
        return "ip" if self.network.version == 4 else "ip6"

    @property
    def tool(self) -> str:
        return "iptables" if self.network.version == 4 else "ip6tables"

    def listing(self) -> list[str]:
        """The chain as `iptables -S VXNET-FWD` prints it when it is ours, unchanged."""
        return [f"-N {CHAIN}", *(f'-A {CHAIN} -{way} {self.network} -m comment --comment '
                                 f'"{COMMENT}" -j ACCEPT' for way in "sd")]

    def restore(self, jump: bool) -> str:
        """iptables-restore --noflush input replacing the chain (and adding the jump)."""
        return "\n".join(["*filter", f":{CHAIN} - [0:0]", *self.listing()[1:],
                          *([f'-A FORWARD -m comment --comment "{COMMENT}" -j {CHAIN}']
                            if jump else []), "COMMIT", ""])


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    backend: str | None  # "nf_tables", "legacy", "" (the host's only iptables); None: not yet
    in_place: bool  # as of the last check: every family's chain and jump as we wrote them
    repairs: int
    error: str | None  # why the last check or load failed


async def choose_backend(run: Runner = nft.run, netns: str | None = None,
                         which: Callable[[str], str | None] = shutil.which) -> str:
    """"-nft" or "-legacy" (the backend whose tables hold more rules; nf_tables on a tie), or ""
    when the host has only a plain `iptables`."""
    if not (which("iptables-nft-save") and which("iptables-legacy-save")):
        return ""
    counts = {}
    for suffix in ("-nft", "-legacy"):
        rc, out, _ = await run(f"iptables{suffix}-save", netns=netns)
        counts[suffix] = sum(line.startswith("-A ") for line in out.splitlines()) if rc == 0 else -1
    return "-legacy" if counts["-legacy"] > counts["-nft"] else "-nft"


class Forwarding:
    """VXNET-FWD and its jump, for every family the cluster has, kept as written."""

    def __init__(self, rules: list[ForwardRules], *, netns: str | None = None,
                 run: Runner = nft.run,
                 which: Callable[[str], str | None] = shutil.which) -> None:
        self.rules, self.netns, self.run, self.which = rules, netns, run, which
        self.suffix: str | None = None  # the backend's, chosen at the first load
        self.repairs = 0  # found changed or gone after we wrote them, and put back
        self.in_place = False
        self.error: str | None = None
        self.watch = TableWatch(self._watched, netns=netns, name="nftables notifications "
                                "(iptables' filter table)")

    def _watched(self) -> list[NamedTable]:
        # legacy tables are not nftables: no notification tells of them, the timer does
        return [] if self.suffix == "-legacy" else [
            NamedTable(r.family, "filter") for r in self.rules]

    def status(self) -> ForwardStatus:
        backend = None if self.suffix is None else {"-nft": "nf_tables", "-legacy": "legacy"
                                                     }.get(self.suffix, "")
        return ForwardStatus(backend, self.in_place, self.repairs, self.error)

    async def _iptables(self, r: ForwardRules, *args: str, stdin: str | None = None,
                        restore: bool = False) -> tuple[int, str]:
        assert self.suffix is not None
        tool = f"{r.tool}{self.suffix}{'-restore' if restore else ''}"
        if not self.which(tool):
            raise nft.NftError(f"{tool} not found: the FORWARD accept rules cannot be written "
                               "(install iptables, or run with --no-iptables-forward-rules)")
        rc, out, err = await self.run(tool, *WAIT, *args, stdin=stdin, netns=self.netns)
        return rc, out if rc == 0 else err.strip()

    async def check(self) -> None:
        """Write what is missing or changed, every family at once; raise NftError (the next
        check retries) when iptables fails."""
        if self.suffix is None:
            self.suffix = await choose_backend(self.run, self.netns, self.which)
        try:
            for r in self.rules:
                rc, out = await self._iptables(r, "-S", CHAIN)
                chain_ok = rc == 0 and out.splitlines() == r.listing()
                jump_ok = (await self._iptables(r, "-C", *JUMP))[0] == 0
                if chain_ok and jump_ok:
                    continue
                if self.in_place:
                    log.warning("the FORWARD accept rules (%s): %s; writing them again", r.tool,
                                "changed" if rc == 0 else "gone")
                    self.repairs += 1
                    self.in_place = False
                rc, err = await self._iptables(r, "--noflush", stdin=r.restore(not jump_ok),
                                               restore=True)
                if rc != 0:
                    raise nft.NftError(f"{r.tool}-restore could not write the FORWARD accept "
                                       f"rules: {err}")
        except VxnetError as e:
            self.in_place, self.error = False, str(e)
            raise
        self.in_place, self.error = True, None

    async def keep(self, interval: float) -> None:
        """Write the rules, then check them whenever someone else changes the filter table and
        every `interval` seconds."""
        with self.watch:  # before the first check: no change after it goes unseen
            while True:
                before = self.error
                try:
                    await self.check()
                except VxnetError as e:
                    if str(e) != before:  # a host without iptables: said once, not every check
                        log.error("%s", e)
                else:
                    if before is not None:
                        log.info("the FORWARD accept rules are in place again")
                await self.watch.wait(interval)
