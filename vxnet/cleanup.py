"""`vxnet cleanup`: take what vxnet put on a node off it again -- its VXLAN devices (and with
them their neighbours, FDB entries, nexthops and routes), its own routes and nexthops elsewhere
(DirectRouting), its nftables tables, its FORWARD accept rules, subnet.env and the CNI
conflist -- and, if asked, give the lease back. Refuses while an agent answers on this node."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from vxnet.errors import VxnetError
from vxnet.kernel.allowlist import TABLE as ALLOWLIST_TABLE
from vxnet.kernel.forward import CHAIN as FORWARD_CHAIN
from vxnet.kernel.forward import JUMP, WAIT
from vxnet.kernel.masq import TABLE as MASQ_TABLE
from vxnet.kernel.routes import PROTO_VXNET
from vxnet.store.etcd import Etcd
from vxnet.store.paths import Paths

_OUR_DEVICE = re.compile(r"flannel(-v6)?\.\d+")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _installed(iptables: str) -> bool:
    return bool(shutil.which(iptables) and shutil.which(f"{iptables}-save"))


def agent_answers(host: str, port: int) -> bool:
    """Does an agent's HTTP API answer here (whatever it says)?"""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=3):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if not with 200
    except (urllib.error.URLError, OSError):
        return False


def clean_node(files: list[str | None], say: Callable[[str], None]) -> None:
    links = json.loads(_run("ip", "-d", "-j", "link", "show").stdout or "[]")
    for link in links:
        if _OUR_DEVICE.fullmatch(link["ifname"]) and \
                link.get("linkinfo", {}).get("info_kind") == "vxlan":
            _run("ip", "link", "del", link["ifname"])
            say(f"deleted device {link['ifname']} (its routes, neighbours and FDB went with it)")
    for family in ("-4", "-6"):  # DirectRouting routes live on the parent
        for r in json.loads(_run("ip", family, "-j", "route", "show", "proto",
                                 str(PROTO_VXNET)).stdout or "[]"):
            _run("ip", family, "route", "del", r["dst"], "proto", str(PROTO_VXNET))
            say(f"deleted route {r['dst']}")
    for nh in json.loads(_run("ip", "-j", "nexthop", "show", "protocol",
                              str(PROTO_VXNET)).stdout or "[]"):
        _run("ip", "nexthop", "del", "id", str(nh["id"]))
        say(f"deleted nexthop {nh['id']}")
    for family, table in (("inet", ALLOWLIST_TABLE), ("ip", MASQ_TABLE), ("ip6", MASQ_TABLE)):
        if _run("nft", "delete", "table", family, table).returncode == 0:
            say(f"deleted nftables table {family} {table}")
    for tool in ("iptables", "ip6tables"):
        # both backends where both are installed (a backend's -save only reads what is there),
        # else the plain tool; none on a host without iptables
        both = [v for v in (f"{tool}-nft", f"{tool}-legacy") if _installed(v)]
        for variant in both or [v for v in (tool,) if _installed(v)]:
            saved = _run(f"{variant}-save", "-t", "filter")
            if saved.returncode == 0 and f":{FORWARD_CHAIN} " in saved.stdout:
                while _run(variant, *WAIT, "-D", *JUMP).returncode == 0:
                    pass
                _run(variant, *WAIT, "-F", FORWARD_CHAIN)
                if _run(variant, *WAIT, "-X", FORWARD_CHAIN).returncode == 0:
                    say(f"deleted the FORWARD accept rules ({variant} chain {FORWARD_CHAIN})")
                else:
                    say(f"could not delete {variant} chain {FORWARD_CHAIN}: see `{variant} -S`")
    for name in filter(None, files):  # subnet.env, the CNI conflist
        path = Path(name)
        if path.exists():
            path.unlink()
            say(f"removed {path}")


async def release_lease(etcd: Etcd, paths: Paths, node_name: str, say: Callable[[str], None]
                        ) -> None:
    """Give this node's subnet back: its lease key(s), owner records and etcd lease(s)."""
    owners, _ = await etcd.get_prefix(paths.owners)
    mine = [kv.key[len(paths.owners):].decode() for kv in owners
            if kv.value.decode(errors="replace") == node_name]
    if not mine:
        say(f"no lease in etcd belongs to node {node_name!r}")
    for key in mine:
        kv = await etcd.get(paths.subnet(key))
        await etcd.delete(paths.subnet(key))
        await etcd.delete(paths.owner(key))
        if kv is not None and kv.lease:
            # expired meanwhile ("lease not found"): nothing left to give back
            with contextlib.suppress(VxnetError):
                await etcd.revoke(kv.lease)
        say(f"released lease {key}")
