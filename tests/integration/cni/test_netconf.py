"""The conflist the agent writes with --cni-conf-file: Debian's bridge plugin, given it as a
runtime would, wires a pod exactly as vxnet-cni's delegation does."""

import ipaddress as ipa
import json
import os
from pathlib import Path

import pytest

from vxnet.cni.netconf import write_conflist
from vxnet.cni.plugin import delegate_config
from vxnet.lab.cluster import run_cni
from vxnet.lab.topology import Lab
from vxnet.store.subnetenv import SubnetEnv

pytestmark = pytest.mark.netns
BRIDGE = Path("/usr/lib/cni/bridge")
ENV = SubnetEnv(ipa.ip_network("10.244.0.0/16"), ipa.ip_network("10.244.7.0/24"), 1450, True,
                ipa.ip_network("fd00:10:244::/48"), ipa.ip_network("fd00:10:244:7::/64"))


def test_written_once_and_again_only_when_it_changes(tmp_path):
    path = tmp_path / "net.d" / "10-vxnet.conflist"
    assert write_conflist(path, ENV, str(tmp_path / "cni"))
    first = path.stat().st_mtime_ns
    assert not write_conflist(path, ENV, str(tmp_path / "cni")) and \
        path.stat().st_mtime_ns == first
    doc = json.loads(path.read_text())
    assert [p["type"] for p in doc["plugins"]] == ["bridge", "portmap"]
    bridge = doc["plugins"][0]
    assert {k: bridge[k] for k in ("bridge", "mtu", "ipMasq", "isGateway")} == \
        {"bridge": "cni0", "mtu": 1450, "ipMasq": False, "isGateway": True}
    # the same bridge config vxnet-cni hands its delegate
    assert {**bridge, "cniVersion": "1.0.0", "name": "vxnet"} == delegate_config(
        {"cniVersion": "1.0.0", "name": "vxnet", "dataDir": str(tmp_path / "cni")}, ENV)
    moved = SubnetEnv(ENV.network, ipa.ip_network("10.244.9.0/24"), 1400, True)
    assert write_conflist(path, moved, None)
    bridge = json.loads(path.read_text())["plugins"][0]
    assert bridge["mtu"] == 1400 and bridge["ipam"]["ranges"] == [[{"subnet": "10.244.9.0/24"}]]
    assert not list(path.parent.glob(".*"))  # no temp file left behind


@pytest.mark.skipif(not os.path.exists(BRIDGE), reason="needs containernetworking-plugins")
def test_the_bridge_plugin_wires_a_pod_from_it(tmp_path):
    path = tmp_path / "10-vxnet.conflist"
    write_conflist(path, ENV, str(tmp_path / "cni"))
    doc = json.loads(path.read_text())
    conf = {"cniVersion": doc["cniVersion"], "name": doc["name"], **doc["plugins"][0]}
    lab = Lab("cnf")
    try:
        n = lab.add_node(1)
        pod = lab.new_ns("pod")
        res = run_cni(n.ns.name, "ADD", pod.name, json.dumps(conf).encode(), plugin=BRIDGE)
        assert res.returncode == 0, res.stdout
        ips = [ipa.ip_interface(i["address"]) for i in json.loads(res.stdout)["ips"]]
        assert [i.network for i in ips] == [ENV.subnet, ENV.ipv6_subnet]
        assert "mtu 1450" in pod.ip("link", "show", "eth0").stdout
        assert "10.244.0.0/16 via 10.244.7.1" in pod.ip("route").stdout
        assert run_cni(n.ns.name, "DEL", pod.name, json.dumps(conf).encode(),
                       plugin=BRIDGE).returncode == 0
        assert "veth" not in n.ns.ip("link").stdout
    finally:
        lab.close()
