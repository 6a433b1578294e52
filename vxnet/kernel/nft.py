"""Running `nft` and `iptables`, the ways vxnet changes netfilter: every call has a deadline, and
the PIDs of our own runs are remembered so that the ruleset notifications they cause (iptables'
nf_tables backend commits through nftables too) can be told apart from everyone else's."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import deque

from vxnet.errors import VxnetError

TIMEOUT = 10.0  # seconds; an nft run normally takes milliseconds
_own_pids: deque[int] = deque(maxlen=64)


class NftError(VxnetError):
    """nft (or iptables) failed or could not be run; the caller retries, nothing is left
    half-done (every script is one transaction)."""


def available() -> bool:
    return shutil.which("nft") is not None


def ours(pid: int) -> bool:
    """Was the nftables transaction committed by PID one of our own nft runs?"""
    return pid in _own_pids


async def nft(*args: str, stdin: str | None = None, netns: str | None = None
              ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one nft run, inside `netns` if given."""
    return await run("nft", *args, stdin=stdin, netns=netns)


async def run(*command: str, stdin: str | None = None, netns: str | None = None
              ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one run of a netfilter tool (`command`: the program and
    its arguments), inside `netns` if given."""
    program, args = command[0], command[1:]
    argv = [*command] if netns is None else ["ip", "netns", "exec", netns, *command]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        raise NftError(f"cannot run {program}: {e.strerror}") from None
    _own_pids.append(proc.pid)  # `ip netns exec` execs the tool: the same PID
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None),
                                          TIMEOUT)
    except TimeoutError:
        raise NftError(f"{program} {' '.join(args)}: no answer in {TIMEOUT:.0f}s") from None
    finally:  # timed out, or our task cancelled: never leave the process behind
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()

