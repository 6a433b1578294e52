"""--iptables-forward-rules (on by default, as flanneld's): the cluster network accepted in the
filter table's FORWARD chain, so that pods reach each other on hosts whose FORWARD policy is
DROP (Docker sets it when it turns forwarding on itself; ufw defaults to it).

Why iptables, in a project that otherwise speaks nftables: an nftables `accept` ends only the
base chain it is in, and a drop in any other table at the same hook is final. The DROP sits in
iptables' filter table, so the accept must sit in that chain too, written by the iptables the
host uses: its nf_tables or its legacy backend, chosen once as Kubernetes' iptables-wrapper
chooses (the backend holding kubelet's hint chain, else the one whose tables hold more rules).

The rules are flanneld's FLANNEL-FWD under vxnet's name: a chain VXNET-FWD accepting the
network as source and as destination, jumped to from the end of FORWARD. The chain is replaced
whole by one iptables-restore (declaring a chain flushes it; the same transaction adds a
missing jump or drops a doubled one) and put back when found changed: soon after someone
else's nf_tables transaction touched the filter table (at most a check a second: kube-proxy
may rewrite the table that often), and on a timer (the legacy backend sends no
notifications)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
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
JUMP_RULE = f'-A FORWARD -m comment --comment "{COMMENT}" -j {CHAIN}'  # as `iptables -S` has it
WAIT = ("-w", "5")  # seconds for the xtables lock another iptables may hold
NO_SUCH = 1  # iptables' exit code for a rule or chain that is not there; others are failures
HINTS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")  # kubelet's, in the backend it uses
MIN_GAP = 1.0  # seconds between checks that notifications ask for


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

    def restore(self, jumps: int) -> str:
        """iptables-restore --noflush input replacing the chain and leaving one jump to it
        (`jumps`: how many FORWARD has now)."""
        fix = ([JUMP_RULE] if jumps == 0 else
               [JUMP_RULE.replace("-A", "-D", 1)] * (jumps - 1))
        return "\n".join(["*filter", f":{CHAIN} - [0:0]", *self.listing()[1:], *fix,
                          "COMMIT", ""])


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    backend: str | None  # "nf_tables", "legacy", "" (the host's only iptables); None: not yet
    in_place: bool  # as of the last check: every family's chain and jump as we wrote them
    repairs: int
    error: str | None  # why the last check or load failed


async def choose_backend(run: Runner = nft.run, netns: str | None = None,
                         which: Callable[[str], str | None] = shutil.which) -> str:
    """"-nft" or "-legacy", or "" when the host has only a plain `iptables`: the backend
    holding kubelet's hint chains (a Kubernetes node), else the one whose tables (IPv4 and
    IPv6) hold more rules, nf_tables on a tie -- as Kubernetes' iptables-wrapper decides."""
    if not (which("iptables-nft-save") and which("iptables-legacy-save")):
        return ""
    rules = {}
    for suffix in ("-nft", "-legacy"):
        rc, out, _ = await run(f"iptables{suffix}-save", "-t", "mangle", netns=netns)
        if rc == 0 and any(hint in out for hint in HINTS):
            return suffix
        rules[suffix] = 0
        for tool in ("iptables", "ip6tables"):
            rc, out, _ = await run(f"{tool}{suffix}-save", netns=netns)
            rules[suffix] += sum(line.startswith("-") for line in out.splitlines()) \
                if rc == 0 else 0
    return "-legacy" if rules["-legacy"] > rules["-nft"] else "-nft"


class Forwarding:
    """VXNET-FWD and its jump, for every family the cluster has, kept as written. Its checks
    run one at a time."""

    def __init__(self, rules: list[ForwardRules], *, netns: str | None = None,
                 run: Runner = nft.run,
                 which: Callable[[str], str | None] = shutil.which) -> None:
        self.rules, self.netns, self.run, self.which = rules, netns, run, which
        self.suffix: str | None = None  # the backend's, chosen at the first check
        self.repairs = 0  # found changed or gone after we wrote them, and put back
        self.in_place = False
        self.error: str | None = None
        self.watch = TableWatch(self._watched, netns=netns, name="nftables notifications "
                                "(iptables' filter table)")
        self._lock = asyncio.Lock()

    def _watched(self) -> list[NamedTable]:
        # legacy tables are not nftables: no notification tells of them, the timer does
        return [] if self.suffix == "-legacy" else [
            NamedTable(r.family, "filter") for r in self.rules]

    def status(self) -> ForwardStatus:
        backend = None if self.suffix is None else {"-nft": "nf_tables", "-legacy": "legacy"
                                                     }.get(self.suffix, "")
        return ForwardStatus(backend, self.in_place, self.repairs, self.error)

    async def _iptables(self, r: ForwardRules, *args: str, stdin: str | None = None,
                        restore: bool = False, missing_ok: bool = False) -> tuple[int, str]:
        """(exit code, stdout) of one run; NftError when it fails, unless `missing_ok` and it
        only says that what it was asked about is not there."""
        assert self.suffix is not None
        tool = f"{r.tool}{self.suffix}{'-restore' if restore else ''}"
        if not self.which(tool):
            raise nft.NftError(f"{tool} not found: the FORWARD accept rules cannot be written "
                               "(install iptables, or run with --no-iptables-forward-rules)")
        rc, out, err = await self.run(tool, *WAIT, *args, stdin=stdin, netns=self.netns)
        if rc != 0 and not (missing_ok and rc == NO_SUCH):
            raise nft.NftError(f"{tool} {' '.join(args)} failed (exit code {rc}): "
                               f"{err.strip()}")
        return rc, out

    async def check(self) -> None:
        """Write what is missing or changed, every family at once; raise NftError (the next
        check retries) when iptables fails. A failure proves nothing missing: it is no
        repair."""
        async with self._lock:
            try:
                if self.suffix is None:
                    self.suffix = await choose_backend(self.run, self.netns, self.which)
                for r in self.rules:
                    await self._check(r)
            except VxnetError as e:
                self.in_place, self.error = False, str(e)
                raise
            self.in_place, self.error = True, None

    async def _check(self, r: ForwardRules) -> None:
        jumps = (await self._iptables(r, "-S", "FORWARD"))[1].splitlines().count(JUMP_RULE)
        rc, out = await self._iptables(r, "-S", CHAIN, missing_ok=True)
        chain = out.splitlines() if rc == 0 else None
        if chain == r.listing() and jumps == 1:
            return
        if self.in_place:
            found = ("chain gone" if chain is None else "chain changed"
                     if chain != r.listing() else f"{jumps} jumps to it in FORWARD")
            log.warning("the FORWARD accept rules (%s): %s; writing them again", r.tool, found)
            self.repairs += 1
            self.in_place = False  # should the write fail, its retry is this same repair
        await self._iptables(r, "--noflush", stdin=r.restore(jumps), restore=True)

    async def keep(self, interval: float) -> None:
        """Write the rules, then check them whenever someone else changes the filter table
        (a second apart at least) and every `interval` seconds."""
        with self.watch:  # before the first check: no change after it goes unseen
            while True:
                began, before = time.monotonic(), self.error
                try:
                    await self.check()
                except VxnetError as e:
                    if str(e) != before:  # a host without iptables: said once, not every check
                        log.error("%s", e)
                else:
                    if before is not None:
                        log.info("the FORWARD accept rules are in place again")
                if await self.watch.wait(interval):
                    await asyncio.sleep(max(0.0, began + MIN_GAP - time.monotonic()))
