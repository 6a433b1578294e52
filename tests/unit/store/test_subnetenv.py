import ipaddress as ipa

import pytest

from vxnet.errors import SubnetEnvError
from vxnet.store.subnetenv import SubnetEnv


def test_render_matches_flannel(tmp_path):
    env = SubnetEnv(ipa.ip_network("10.244.0.0/16"), ipa.ip_network("10.244.5.0/24"), 1450, True)
    env.write(tmp_path / "run" / "subnet.env")
    assert (tmp_path / "run" / "subnet.env").read_text() == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert SubnetEnv.read(tmp_path / "run" / "subnet.env") == env
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["subnet.env"]  # no temp left


def test_ipv6_lines():
    env = SubnetEnv(ipa.ip_network("10.244.0.0/16"), ipa.ip_network("10.244.5.0/24"), 1430,
                    False, ipa.ip_network("fd00:10:244::/48"), ipa.ip_network("fd00:10:244:5::/64"))
    text = env.render()
    assert ("FLANNEL_IPV6_NETWORK=fd00:10:244::/48\n"
            "FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n") in text
    assert SubnetEnv.parse(text) == env


@pytest.mark.parametrize(("text", "why"), [
    ("FLANNEL_SUBNET=nope\n", "is not a network"),
    ("garbage line\n", "not NAME=VALUE"),
    ("FLANNEL_MTU=big\nFLANNEL_SUBNET=10.0.0.1/24\n", "is not a number"),
    ("FLANNEL_MTU=1450\n", "neither FLANNEL_SUBNET"),
])
def test_malformed(text, why):
    with pytest.raises(SubnetEnvError, match=why):
        SubnetEnv.parse(text)


def test_missing_file(tmp_path):
    with pytest.raises(SubnetEnvError, match="No such file"):
        SubnetEnv.read(tmp_path / "nope.env")
