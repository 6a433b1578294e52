"""`vxnet status` (this node, from the agent's HTTP API) and `vxnet leases` (the cluster, from
etcd): what an operator looks at first when pod networking misbehaves."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from vxnet.errors import VxnetError
from vxnet.store.etcd import Etcd
from vxnet.store.paths import Paths
from vxnet.store.watcher import LeaseWatcher
from vxnet.textui import table


def fetch(host: str, port: int, path: str) -> Any:
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise VxnetError(f"cannot read {url}: {reason} (is `vxnet agent` running here, with "
                         "this --healthz-ip/--healthz-port?)") from None


def render_health(health: dict[str, Any]) -> str:
    """The summary line, and the peers that are not healthy with why."""
    if not health.get("enabled"):
        return "peer health: probes off (--health-interval 0)"
    s = health["summary"]
    out = [f"peer health: {s.get('healthy', 0)} healthy, {s.get('unhealthy', 0)} unhealthy, "
           f"{s.get('unknown', 0)} not probed yet (a round every "
           f"{health['intervalSeconds']:g} s)"]
    out += [f"  {k} ({p['publicIP']}), since {p['since']}: {p['diagnosis']}"
            for k, p in health["peers"].items() if p["state"] == "unhealthy"]
    return "\n".join(out)


def render_status(ipam: dict[str, Any], state: dict[str, Any]) -> str:
    out = [
        f"node       {ipam.get('nodeName')}"
        f"{'' if ipam.get('nodeId') is None else ' (ID ' + str(ipam.get('nodeId')) + ')'}, "
        f"{'ready' if state.get('ready') else 'NOT READY: ' + str(state.get('notReady'))}",
        f"lease      {ipam.get('podSubnetThisNode')} (key {ipam.get('leaseKey')}), "
        f"node IP {ipam.get('nodeIP')}",
        f"network    {ipam.get('network')}",
    ]
    for fam, ov in state.get("overlays", {}).items():
        csum = {True: "on", False: "off", None: "?"}[ov.get("txChecksumOffload")]
        out.append(f"device     {ov['device']} ({fam}, ifindex {ov['ifindex']}"
                   f"{', PARKED' if ov['parked'] else ''}), local {ov.get('local')}, MTU "
                   f"{ov.get('mtu')}, tx checksum offload {csum}, nexthop objects "
                   f"{'yes' if ov['nexthops'] else 'no'}, kernel writes "
                   + ", ".join(f"{k} {v}" for k, v in ov["kernelWrites"].items()))
        peers = ov["peers"]
        out.append(f"\n{fam} peers: {len(peers)}, programmed "
                   f"{sum(p['programmed'] for p in peers.values())}")
        if peers:
            out.append(table(["lease", "subnet", "public IP", "VTEP MAC", "programmed"], [
                [k, p["subnet"], p["publicIP"], p["vtepMAC"], "yes" if p["programmed"] else "NO"]
                for k, p in peers.items()]))
        if ov["rejected"]:
            out.append(f"\n{fam} peers skipped:")
            out += [f"  {k}: {why}" for k, why in ov["rejected"].items()]
        drift = ov["drift"]
        out.append(f"\n{fam} drift: " + ("none" if not drift else json.dumps(drift)))
    allow = state.get("vxlanAllowList")
    out.append("\nVXLAN allow-list: " + ("off" if allow is None else
               f"UDP {allow['port']} from {allow['peers']} peer IPs, "
               f"{'in step' if allow['inStep'] else 'NOT IN STEP'}, {allow['repairs']} repairs, "
               f"{allow['refusedPackets']} packets refused"))
    if allow and allow["refusedSources"]:
        out += [f"  refused from {ip}: {n} packets" for ip, n in allow["refusedSources"].items()]
    fwd = state.get("forwardRules")
    out.append("FORWARD accept rules: " + (
        "off" if fwd is None else
        f"iptables ({fwd['backend'] or 'the host default'}), "
        f"{'in place' if fwd['inPlace'] else 'NOT IN PLACE'}, {fwd['repairs']} repairs"
        + (f"; {fwd['error']}" if fwd["error"] else "")))
    if state.get("invalidLeases"):
        out.append("\ninvalid leases in the store (skipped):")
        out += [f"  {k}: {why}" for k, why in state["invalidLeases"].items()]
    return "\n".join(out)


async def cluster_leases(etcd: Etcd, paths: Paths) -> list[list[str]]:
    snap = await LeaseWatcher(etcd, paths).snapshot()
    owners_kvs, _ = await etcd.get_prefix(paths.owners)
    owners = {kv.key[len(paths.owners):].decode(errors="replace"): kv.value.decode(
        errors="replace") for kv in owners_kvs}
    rows = []
    for key, lease in sorted(snap.leases.items()):
        a = lease.attrs
        rows.append([key, str(a.public_ip or a.public_ipv6), a.vtep_mac or a.vtep_mac6 or "",
                     owners.get(key, "(flanneld?)"),
                     "reservation" if lease.reserved else f"{lease.etcd_lease:x}"])
    rows += [[key, "INVALID", str(err.reason), "", ""] for key, err in sorted(
        snap.invalid.items())]
    return rows


LEASE_HEADERS = ["subnet key", "public IP", "VTEP MAC", "node", "etcd lease"]
