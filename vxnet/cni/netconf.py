"""The bridge + host-local network config for this node's pods, from subnet.env: what vxnet-cni
hands the bridge plugin on every ADD, and what the agent writes as a conflist with
--cni-conf-file so that a node needs only the standard CNI plugins (no Python on the host)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vxnet.ip import first_host
from vxnet.store.subnetenv import SubnetEnv, write_atomic

NAME = "vxnet"
CNI_VERSION = "1.0.0"


def bridge_config(env: SubnetEnv, name: str, cni_version: str,
                  data_dir: str | None = None) -> dict[str, Any]:
    """bridge cni0 (gateway, hairpin, the overlay's MTU) with host-local IPAM over this node's
    subnet(s) and a route to the cluster network through the bridge."""
    ranges, routes = [], []
    for net, sub in ((env.network, env.subnet), (env.ipv6_network, env.ipv6_subnet)):
        if sub is not None:
            ranges.append([{"subnet": str(sub)}])
            if net is not None:  # explicit gw: the bridge plugin's CHECK compares it
                routes.append({"dst": str(net), "gw": str(first_host(sub))})
    ipam: dict[str, Any] = {"type": "host-local", "ranges": ranges, "routes": routes}
    if data_dir:
        ipam["dataDir"] = str(Path(data_dir) / "ipam")
    return {
        "cniVersion": cni_version, "name": name, "type": "bridge",
        "bridge": "cni0", "isGateway": True, "hairpinMode": True, "mtu": env.mtu,
        # when the agent masquerades (FLANNEL_IPMASQ=true), the bridge must not do it twice
        "ipMasq": not env.ipmasq, "ipam": ipam,
    }


def conflist(env: SubnetEnv, data_dir: str | None = None) -> dict[str, Any]:
    """A CNI conflist: the bridge, then portmap for hostPort (as flannel's own conflist)."""
    bridge = bridge_config(env, NAME, CNI_VERSION, data_dir)
    del bridge["cniVersion"], bridge["name"]
    return {"cniVersion": CNI_VERSION, "name": NAME, "plugins": [
        bridge, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def write_conflist(path: str | Path, env: SubnetEnv, data_dir: str | None = None) -> bool:
    """Atomically, and only if it changed (runtimes watch the directory). True if written."""
    text = json.dumps(conflist(env, data_dir), indent=2) + "\n"
    p = Path(path)
    try:
        if p.read_text() == text:
            return False
    except OSError:
        pass
    write_atomic(p, text)
    return True
