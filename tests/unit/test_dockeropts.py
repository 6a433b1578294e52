"""`vxnet docker-opts` writes what flannel's mk-docker-opts.sh writes."""

import ipaddress as ipa

from click.testing import CliRunner

from vxnet.cli import main
from vxnet.dockeropts import render
from vxnet.store.subnetenv import SubnetEnv

ENV = SubnetEnv(ipa.ip_network("10.244.0.0/16"), ipa.ip_network("10.244.7.0/24"), 1450, True)


def test_the_variables_of_mk_docker_opts():
    assert render(ENV) == (
        'DOCKER_OPT_BIP="--bip=10.244.7.1/24"\n'
        'DOCKER_OPT_IPMASQ="--ip-masq=false"\n'  # the agent masquerades: docker must not
        'DOCKER_OPT_MTU="--mtu=1450"\n'
        'DOCKER_OPTS=" --bip=10.244.7.1/24 --ip-masq=false --mtu=1450"\n')


def test_dual_stack_and_no_agent_masquerade():
    env = SubnetEnv(ENV.network, ENV.subnet, 1430, False, ipa.ip_network("fd00:10:244::/48"),
                    ipa.ip_network("fd00:10:244:7::/64"))
    text = render(env)
    assert 'DOCKER_OPT_IPMASQ="--ip-masq=true"' in text
    assert 'DOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=fd00:10:244:7::/64"' in text


def test_the_command_writes_a_file_or_stdout_and_fails_clearly(tmp_path):
    ENV.write(tmp_path / "subnet.env")
    out = CliRunner().invoke(main, ["docker-opts", "--subnet-file", str(tmp_path / "subnet.env"),
                                    "--output", str(tmp_path / "docker_opts.env")])
    assert out.exit_code == 0 and (tmp_path / "docker_opts.env").read_text() == render(ENV)
    out = CliRunner().invoke(main, ["docker-opts", "--subnet-file", str(tmp_path / "subnet.env")])
    assert out.output == render(ENV)
    out = CliRunner().invoke(main, ["docker-opts", "--subnet-file", str(tmp_path / "none")])
    assert out.exit_code == 1 and "No such file" in out.output
    assert "Traceback" not in out.output
