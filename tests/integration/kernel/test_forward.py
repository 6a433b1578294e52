"""--iptables-forward-rules against the real iptables of a namespace of their own: written with
the backend the namespace uses, put back at once when someone else changes them (iptables'
nf_tables backend notifies), on the timer for the legacy backend (it does not), and counted."""

import asyncio
import ipaddress as ipa
import shutil

import pytest

from tests.waiting import SOON, until
from vxnet.kernel import nft
from vxnet.kernel.forward import CHAIN, JUMP, JUMP_RULE, Forwarding, ForwardRules, choose_backend
from vxnet.kernel.nft import NftError

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not shutil.which("iptables-legacy"),
                                 reason="needs Debian's iptables (run `make test`)")]

NET4, NET6 = ipa.ip_network("10.244.0.0/16"), ipa.ip_network("fd00:10:244::/48")
RULES = [ForwardRules(NET4), ForwardRules(NET6)]


def chain(ns, tool: str) -> list[str]:
    return ns.run(tool, "-w", "5", "-S", CHAIN, check=False).stdout.splitlines()


def forward(ns, tool: str) -> list[str]:
    return ns.run(tool, "-w", "5", "-S", "FORWARD").stdout.splitlines()


def written(ns, suffix: str = "") -> bool:
    """Both families' chains as ours, each jumped to exactly once."""
    return all(chain(ns, r.tool + suffix) == r.listing() and
               forward(ns, r.tool + suffix).count(JUMP_RULE) == 1 for r in RULES)


async def test_rules_changed_or_deleted_by_hand_are_put_back_at_once(ns):
    ns.run("iptables", "-P", "FORWARD", "DROP")  # as Docker leaves it; ours go after its rules
    ns.run("iptables", "-A", "FORWARD", "-i", "lo", "-j", "ACCEPT")
    fwd = Forwarding(RULES, netns=ns.name)
    task = asyncio.create_task(fwd.keep(interval=3600))  # the timer never comes into it
    try:
        await until(lambda: fwd.status().in_place, SOON, "the rules written")
        assert written(ns) and fwd.status().backend == "nf_tables"
        assert forward(ns, "iptables")[-1].endswith(f"-j {CHAIN}")  # appended, as flanneld's
        assert "-P FORWARD DROP" in forward(ns, "iptables")  # the policy is not ours to change
        tampering = [("iptables", "-F", CHAIN),
                     ("ip6tables", "-D", "FORWARD", "-m", "comment", "--comment",
                      "vxnet forward", "-j", CHAIN),
                     ("iptables", "-A", CHAIN, "-j", "DROP"),
                     ("ip6tables", "-R", CHAIN, "1", "-s", "fd00:1::/64", "-j", "ACCEPT"),
                     ("iptables", "-I", *JUMP[:1], "1", *JUMP[1:])]  # jumped to twice
        for n, tamper in enumerate(tampering, 1):
            ns.run(*tamper)
            assert not written(ns)
            # back on the notification, and the repair counted
            await until(lambda n=n: fwd.repairs == n and fwd.status().in_place, SOON,
                        f"the rules back after {' '.join(tamper)}")
            assert written(ns) and fwd.watch.foreign == n
        # someone else's change elsewhere in the filter table is seen, and is no repair
        ns.run("iptables", "-A", "FORWARD", "-o", "lo", "-j", "ACCEPT")
        await until(lambda: fwd.watch.foreign == len(tampering) + 1, SOON, "the notification")
        await fwd.check()  # after the check it woke, or instead of it (checks take turns)
        assert fwd.repairs == len(tampering) and written(ns)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not fwd.watch.is_open


async def test_a_host_on_the_legacy_backend_gets_its_rules_there(ns):
    ns.run("iptables-legacy", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")  # the host's own rules
    assert await choose_backend(netns=ns.name) == "-legacy"
    fwd = Forwarding(RULES, netns=ns.name)
    await fwd.check()
    assert written(ns, "-legacy") and fwd.status().backend == "legacy"
    assert not chain(ns, "iptables-nft")  # nothing in the backend the host does not use
    ns.run("iptables-legacy", "-F", CHAIN)  # no notification: the next check (the timer's) sees it
    await fwd.check()
    assert written(ns, "-legacy") and fwd.repairs == 1


async def test_iptables_missing_is_an_error_that_names_it_and_is_retried(ns):
    fwd = Forwarding(RULES, netns=ns.name, which=lambda tool: None if "restore" in tool
                     else shutil.which(tool))
    with pytest.raises(NftError, match="iptables-nft-restore not found: the FORWARD accept rules"):
        await fwd.check()
    status = fwd.status()
    assert not status.in_place and "not found" in (status.error or "")
    fwd.which = shutil.which  # installed: the next check writes them
    await fwd.check()
    assert written(ns) and fwd.status().error is None and fwd.repairs == 0


async def test_iptables_failing_for_a_moment_is_no_repair_and_writes_nothing(ns):
    """A lock held too long (exit code 4) says nothing of the rules: they are not taken for
    missing, so no second jump is added and no repair counted."""
    fwd = Forwarding(RULES, netns=ns.name)
    await fwd.check()
    failing = True

    async def busy(*command: str, stdin: str | None = None, netns: str | None = None):
        if failing and "-S" in command:
            return 4, "", "Another app is currently holding the xtables lock."
        return await nft.run(*command, stdin=stdin, netns=netns)
    fwd.run = busy
    with pytest.raises(NftError, match=r"-S FORWARD failed \(exit code 4\): Another app"):
        await fwd.check()
    assert not fwd.status().in_place and written(ns)
    failing = False
    await fwd.check()
    assert fwd.status().in_place and fwd.repairs == 0 and written(ns)
