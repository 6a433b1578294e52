"""`vxnet agent`'s flags are AgentOptions' fields, declared once (vxnet/agent/options.py): one
flag per field with flanneld's name and FLANNELD_* variable, the field's default, and what
`vxnet agent` parses is an AgentOptions. The other commands' etcd flags are EtcdOptions'."""

import dataclasses
import socket

import click
import pytest
from click.testing import CliRunner

from vxnet.agent.options import AgentOptions, EtcdOptions
from vxnet.cli import agent, cleanup, leases, main, status
from vxnet.errors import VxnetError
from vxnet.store.etcd import Credentials, TLSFiles
from vxnet.store.manager import DEFAULT_TTL

FIELDS = [f.name for f in dataclasses.fields(AgentOptions)]
ETCD_FIELDS = [f.name for f in dataclasses.fields(EtcdOptions)]


def options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


@pytest.fixture
def parse(monkeypatch):
    """`vxnet agent ARGS` with environment ENV (and no FLANNELD_* of the test runner's): the
    AgentOptions it would run with, or click's exit code and output when it stops first."""
    got: list[AgentOptions] = []

    async def run(opts: AgentOptions) -> None:
        got.append(opts)
    monkeypatch.setattr("vxnet.agent.main.run", run)

    def parse(*args: str, **env: str) -> AgentOptions | tuple[int, str]:
        unset = {f"FLANNELD_{n.upper()}": None for n in FIELDS}
        result = CliRunner().invoke(main, ["agent", *args], env=unset | env)
        if got:
            assert result.exit_code == 0, result.output
            return got.pop()
        return result.exit_code, result.output
    return parse


def test_every_field_is_exactly_one_flag_with_flanneld_name_and_variable():
    opts = options(agent)
    assert set(opts) == {*FIELDS, "verbose"}
    assert [p.name for p in agent.params][:len(FIELDS)] == FIELDS  # --help lists them in order
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        opt = opts[name]
        assert opt.opts == [flag]
        assert opt.secondary_opts in ([], ["--no-" + flag[2:]])
        assert opt.envvar == "FLANNELD_" + name.upper()
        assert opt.help, f"{flag} has no help"
    negatable = {n for n in FIELDS if opts[n].secondary_opts}
    assert negatable == {"vxlan_allowlist", "iptables_forward_rules", "tx_checksum_offload"}


def test_the_defaults_are_the_dataclass_defaults(parse):
    assert parse() == AgentOptions()
    assert AgentOptions().node_name == socket.gethostname()
    assert options(agent)["node_name"].default is socket.gethostname  # called when not given
    for f in dataclasses.fields(AgentOptions):  # and --help shows the same ones
        if f.default is not dataclasses.MISSING:
            assert options(agent)[f.name].default == f.default, f.name


def test_flags_and_flanneld_variables_set_the_fields(parse):
    assert parse("--iface", "eth0", "--iface", "10.0.0.1", "--ip-masq", "--healthz-port", "0",
                 "--node-name", "n1", "--fdb", "on-demand", "--etcd-timeout", "0.5",
                 "--etcd-password", "pw") == AgentOptions(
        iface=("eth0", "10.0.0.1"), ip_masq=True, healthz_port=0, node_name="n1",
        fdb="on-demand", etcd_timeout=0.5, etcd_password="pw")
    assert parse(FLANNELD_ETCD_ENDPOINTS="http://e1:2379,http://e2:2379",
                 FLANNELD_ETCD_PREFIX="/x/net", FLANNELD_IFACE="eth0 eth1",
                 FLANNELD_IP_MASQ="true", FLANNELD_SUBNET_LEASE_TTL="100",
                 FLANNELD_RESYNC_INTERVAL="2.5", FLANNELD_NODE_NAME="n2",
                 FLANNELD_NEIGHBOURS="on-demand") == AgentOptions(
        etcd_endpoints="http://e1:2379,http://e2:2379", etcd_prefix="/x/net",
        iface=("eth0", "eth1"), ip_masq=True, subnet_lease_ttl=100, resync_interval=2.5,
        node_name="n2", neighbours="on-demand")
    assert parse("--node-name", "flag", FLANNELD_NODE_NAME="env").node_name == "flag"


@pytest.mark.parametrize("name", ["vxlan_allowlist", "iptables_forward_rules"])
def test_on_unless_turned_off(parse, name):
    flag, env = name.replace("_", "-"), {"FLANNELD_" + name.upper(): "false"}
    assert getattr(parse(), name) is True
    assert getattr(parse("--no-" + flag), name) is False
    assert getattr(parse(**env), name) is False  # as flanneld's deployments turn it off
    assert getattr(parse("--" + flag, **env), name) is True


def test_boolean_flags_take_flanneld_go_form_too(parse):
    """`--flag=false` as flanneld's manifests and units write it."""
    assert parse("--iptables-forward-rules=false").iptables_forward_rules is False
    assert parse("--ip-masq=true", "--kube-subnet-mgr=1").ip_masq is True
    assert parse("--ip-masq=false") == AgentOptions()  # off, as it is by default
    assert parse("--vxlan-allowlist=F", "--tx-checksum-offload=TRUE") == AgentOptions(
        vxlan_allowlist=False, tx_checksum_offload=True, kube_subnet_mgr=False)
    code, out = parse("--ip-masq=maybe")
    assert code == 2 and "--ip-masq" in out
    code, out = parse("--node-name=n1", "--healthz-port=false")  # not booleans: as given
    assert code == 2 and "'false' is not a valid integer" in out


def test_tx_checksum_offload_is_on_off_or_left_to_the_cluster(parse):
    assert parse().tx_checksum_offload is None  # then Backend.TxChecksumOffload decides
    assert parse("--tx-checksum-offload").tx_checksum_offload is True
    assert parse("--no-tx-checksum-offload").tx_checksum_offload is False
    assert parse(FLANNELD_TX_CHECKSUM_OFFLOAD="false").tx_checksum_offload is False


def test_bad_values_are_click_errors_naming_flag_and_variable(parse):
    code, out = parse("--healthz-port", "70000")
    assert code == 2
    assert ("Invalid value for '--healthz-port' (env var: 'FLANNELD_HEALTHZ_PORT'): 70000 is "
            "not in the range 0<=x<=65535.") in out
    code, out = parse(FLANNELD_NEIGHBOURS="sometimes")
    assert code == 2 and "'sometimes' is not one of 'up-front', 'on-demand'." in out


def test_the_agent_exits_1_with_one_line_on_a_configuration_error(monkeypatch):
    async def run(opts: AgentOptions) -> None:
        raise VxnetError("network config: SubnetLen: /31 is too long; at most /30")
    monkeypatch.setattr("vxnet.agent.main.run", run)
    result = CliRunner().invoke(main, ["agent", "--node-name", "n"])
    assert result.exit_code == 1
    assert result.output == ("vxnet agent: network config: SubnetLen: /31 is too long; "
                             "at most /30\n")


def test_other_commands_take_the_same_etcd_flags_and_defaults():
    agent_opts = options(agent)
    for command in (leases, cleanup):
        opts = options(command)
        for name in ETCD_FIELDS:
            assert opts[name].opts == agent_opts[name].opts
            assert opts[name].envvar == agent_opts[name].envvar
            assert opts[name].default == agent_opts[name].default
    for command, names in ((status, ["healthz_ip", "healthz_port"]),
                           (cleanup, ["subnet_file", "healthz_ip", "healthz_port", "node_name"])):
        for name in names:
            assert options(command)[name].default == agent_opts[name].default, name
    assert "etcd_timeout" not in options(leases)  # the agent's alone


def test_etcd_options_build_the_client():
    etcd = EtcdOptions.from_flags({"etcd_endpoints": "http://a:1,http://b:2", "etcd_prefix": "/p",
                                   "etcd_cafile": "/ca", "etcd_certfile": None,
                                   "etcd_keyfile": None, "etcd_username": "u",
                                   "etcd_password": "pw", "json": True})  # not ours: skipped
    client = etcd.client(timeout=2.0)
    assert len(client.endpoints) == 2
    assert (client.timeout, client.tls, client.auth) == (2.0, TLSFiles("/ca"),
                                                         Credentials("u", "pw"))
    with pytest.raises(VxnetError, match="go together"):
        EtcdOptions(etcd_username="u").client()
    assert "pw" not in repr(etcd)
    assert isinstance(AgentOptions(), EtcdOptions)  # the agent's etcd flags are these


def test_the_lease_ttl_default_is_the_stores():
    assert AgentOptions().subnet_lease_ttl == DEFAULT_TTL
