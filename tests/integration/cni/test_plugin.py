"""vxnet-cni called as a runtime calls it, delegating to Debian's bridge and host-local."""

import ipaddress as ipa
import json
import os

import pytest

from vxnet.lab.cluster import run_cni
from vxnet.lab.topology import Lab
from vxnet.store.subnetenv import SubnetEnv

pytestmark = pytest.mark.netns
if not os.path.exists("/usr/lib/cni/bridge"):
    pytest.skip("needs containernetworking-plugins (run `make test`)", allow_module_level=True)


@pytest.fixture
def node(tmp_path):
    lab = Lab("cni")
    try:
        n = lab.add_node(1)
        SubnetEnv(ipa.ip_network("10.244.0.0/16"), ipa.ip_network("10.244.7.0/24"), 1450,
                  False).write(tmp_path / "subnet.env")
        yield lab, n, tmp_path
    finally:
        lab.close()


def conf(tmp_path, **over):
    return {"cniVersion": "1.0.0", "name": "vxnet-test", "type": "vxnet-cni",
            "subnetFile": str(tmp_path / "subnet.env"), "dataDir": str(tmp_path / "cni"),
            **over}


def call(n, command, pod, stdin, **env):
    res = run_cni(n.ns.name, command, pod.name, stdin if isinstance(stdin, bytes) else
                  json.dumps(stdin).encode(), **env)
    return res.returncode, (json.loads(res.stdout) if res.stdout.strip() else None)


def test_add_check_del(node):
    lab, n, tmp = node
    pod = lab.new_ns("pod")
    rc, result = call(n, "ADD", pod, conf(tmp))
    assert rc == 0, result
    addr = ipa.ip_interface(result["ips"][0]["address"])
    assert addr.network == ipa.ip_network("10.244.7.0/24") and result["ips"][0]["gateway"] == \
        "10.244.7.1"
    assert "10.244.7.1/24" in n.ns.ip("addr", "show", "cni0").stdout
    assert "mtu 1450" in pod.ip("link", "show", "eth0").stdout
    assert "10.244.0.0/16 via 10.244.7.1" in pod.ip("route").stdout
    assert pod.run("ping", "-c", "1", "-W", "2", "10.244.7.1").returncode == 0
    rc, out = call(n, "CHECK", pod, conf(tmp, prevResult=result))
    assert rc == 0, out
    rc, _ = call(n, "DEL", pod, conf(tmp))
    assert rc == 0
    assert "veth" not in n.ns.ip("link").stdout
    assert not list((tmp / "cni").glob("*.json"))  # our saved state is gone
    assert not [p for p in (tmp / "cni" / "ipam" / "vxnet-test").iterdir()
                if p.name.startswith("10.")]  # the address went back to host-local
    assert call(n, "DEL", pod, conf(tmp))[0] == 0  # DEL twice is fine


def test_version():
    import subprocess
    import sys
    from pathlib import Path
    res = subprocess.run([str(Path(sys.executable).parent / "vxnet-cni")], capture_output=True,
                         env={"CNI_COMMAND": "VERSION"})
    assert json.loads(res.stdout)["supportedVersions"][-1] == "1.0.0"


@pytest.mark.parametrize(("stdin", "env", "code", "msg"), [
    (b"{nope", {}, 6, "network config on stdin is not JSON"),
    (b"[]", {}, 6, "not a JSON object"),
    ({"name": "x", "type": "vxnet-cni"}, {}, 7, "'cniVersion' must be a non-empty string"),
    ({"cniVersion": "9.9.9", "name": "x", "type": "vxnet-cni"}, {}, 1,
     "cniVersion 9.9.9 is not supported"),
    ("CONF", {"CNI_COMMAND": "FROB"}, 4, "CNI_COMMAND 'FROB' is not one of"),
    ("CONF", {"CNI_NETNS": "<unset>"}, 4, "CNI_NETNS is not set"),
    ("CONF", {"CNI_CONTAINERID": "../etc"}, 4, "is not a valid container ID"),
    ("NOENV", {}, 11, "no usable subnet.env: is the vxnet agent running?"),
    ("CONF", {"CNI_PATH": "/nonexistent"}, 7, "delegate plugin 'bridge' not found"),
    ("CONF", {"CNI_NETNS": "/run/netns/does-not-exist"}, 100, "delegate bridge ADD failed"),
    ("BADDELEGATE", {}, 7, "'delegate' must be an object"),
])
def test_malformed_input_is_a_cni_error_and_leaves_nothing(node, stdin, env, code, msg):
    lab, n, tmp = node
    pod = lab.new_ns("pod")
    stdin = {"CONF": conf(tmp), "NOENV": conf(tmp, subnetFile=str(tmp / "missing.env")),
             "BADDELEGATE": conf(tmp, delegate=[1])}.get(stdin, stdin) \
        if isinstance(stdin, str) else stdin
    rc, err = call(n, env.pop("CNI_COMMAND", "ADD"), pod, stdin, **env)
    assert rc != 0
    assert err["code"] == code and msg in err["msg"], err
    assert "veth" not in n.ns.ip("link").stdout  # no half-made pod
    assert not list((tmp / "cni").glob("*.json"))
    ipam = tmp / "cni" / "ipam" / "vxnet-test"
    assert not ipam.exists() or not [p for p in ipam.iterdir() if p.name.startswith("10.")]
