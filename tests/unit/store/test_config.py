import ipaddress as ipa
import json

import pytest

from vxnet.errors import ConfigError
from vxnet.store.config import parse_config


def net(s):
    return ipa.ip_network(s)


# --- defaults -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        # SubnetLen 24 for /22 or larger, else prefix+2; Min/Max = second..last subnet
        ({"Network": "10.244.0.0/16"},
         dict(subnet_len=24, subnet_min=net("10.244.1.0/24"), subnet_max=net("10.244.255.0/24"))),
        ({"Network": "10.0.0.0/22"},
         dict(subnet_len=24, subnet_min=net("10.0.1.0/24"), subnet_max=net("10.0.3.0/24"))),
        ({"Network": "10.0.0.0/23"},
         dict(subnet_len=25, subnet_min=net("10.0.0.128/25"), subnet_max=net("10.0.1.128/25"))),
        ({"Network": "10.0.0.0/28"},
         dict(subnet_len=30, subnet_min=net("10.0.0.4/30"), subnet_max=net("10.0.0.12/30"))),
        ({"network": "10.244.0.0/16", "subnetlen": 20},  # keys are case-insensitive
         dict(subnet_len=20, subnet_min=net("10.244.16.0/20"), subnet_max=net("10.244.240.0/20"))),
        ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.0"},
         dict(subnet_len=24, subnet_min=net("10.244.10.0/24"), subnet_max=net("10.244.20.0/24"))),
    ],
)
def test_ipv4_defaults(doc, expect):
    cfg = parse_config(json.dumps(doc))
    assert cfg.ipv4 is not None and cfg.ipv6 is None
    for k, v in expect.items():
        assert getattr(cfg.ipv4, k) == v


def test_backend_defaults():
    cfg = parse_config('{"Network": "10.244.0.0/16"}')
    b = cfg.backend
    assert (b.type, b.vni, b.port, b.gbp, b.learning, b.direct_routing, b.mtu) == (
        "vxlan", 1, 8472, False, False, False, 0)


def test_backend_values_and_port_zero():
    cfg = parse_config(json.dumps({"Network": "10.244.0.0/16", "backend": {
        "type": "VXLAN", "vni": 4096, "port": 0, "gbp": True, "learning": True,
        "directRouting": True, "mtu": 9000}}))
    b = cfg.backend
    assert (b.vni, b.port, b.gbp, b.learning, b.direct_routing, b.mtu) == (
        4096, 8472, True, True, True, 9000)
    assert parse_config(json.dumps({"Network": "10.244.0.0/16",
                                    "Backend": {"Port": 4789}})).backend.port == 4789


@pytest.mark.parametrize(("backend", "expect"), [
    ({}, (False, False)), ({"Neighbours": "on-demand"}, (True, False)),
    ({"Neighbours": "On-Demand", "FDB": "on-demand"}, (True, True)),
    ({"FDB": "on-demand", "Neighbours": "up-front"}, (False, True)),
])
def test_on_demand_resolution(backend, expect):
    b = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": backend})).backend
    assert (b.neigh_on_demand, b.fdb_on_demand) == expect


@pytest.mark.parametrize(
    ("doc", "slen", "smin", "smax"),
    [
        ({"IPv6Network": "fd00:10:244::/48"}, 64, "fd00:10:244:1::/64", "fd00:10:244:ffff::/64"),
        ({"IPv6Network": "fd00::/62"}, 64, "fd00:0:0:1::/64", "fd00:0:0:3::/64"),
        ({"IPv6Network": "fd00::/63"}, 65, "fd00::8000:0:0:0/65", "fd00:0:0:1:8000::/65"),
        ({"IPv6Network": "fd00::/48", "IPv6SubnetLen": 56, "IPv6SubnetMin": "fd00:0:0:500::"},
         56, "fd00:0:0:500::/56", "fd00:0:0:ff00::/56"),
    ],
)
def test_ipv6_defaults(doc, slen, smin, smax):
    cfg = parse_config(json.dumps({"EnableIPv4": False, "EnableIPv6": True, **doc}))
    assert cfg.ipv4 is None and cfg.ipv6 is not None
    assert (cfg.ipv6.subnet_len, cfg.ipv6.subnet_min, cfg.ipv6.subnet_max) == (
        slen, net(smin), net(smax))


def test_dual_stack():
    cfg = parse_config(json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                   "IPv6Network": "fd00:10:244::/48"}))
    assert cfg.enable_ipv4 and cfg.enable_ipv6


def test_unknown_keys_warn_not_fail():
    cfg = parse_config(json.dumps({"Network": "10.244.0.0/16", "Colour": "blue",
                                   "EnableNFTables": True, "Backend": {"Type": "vxlan", "X": 1}}))
    assert cfg.warnings == ("Colour: unknown key, ignored", "Backend.X: unknown key, ignored")


def test_host_bits_are_normalised_with_a_warning():
    cfg = parse_config('{"Network": "10.244.1.5/16"}')
    assert cfg.ipv4.network == net("10.244.0.0/16")
    assert "host bits" in cfg.warnings[0]


def test_json_null_means_default():
    cfg = parse_config('{"Network": "10.244.0.0/16", "SubnetLen": null, "Backend": null}')
    assert cfg.ipv4.subnet_len == 24 and cfg.backend.vni == 1


# --- validation errors: (document, key named, message fragment) ---------------------------------

ERRORS = [
    ("not json", "config", "not valid JSON"),
    ("[]", "config", "must be a JSON object, got array"),
    ("{}", "Network", "missing (required when IPv4 is enabled)"),
    ('{"Network": "banana"}', "Network", "'banana' is not a CIDR network"),
    ('{"Network": 10}', "Network", "expected a string, got number 10"),
    ('{"Network": "fd00::/48"}', "Network", "not an IPv4 network"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 31}', "SubnetLen", "/31 is too long; at most /30"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 17}', "SubnetLen",
     "fits only 2 time(s) in 10.0.0.0/16; the network must hold at least 4 subnets"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 8}', "SubnetLen", "fits only 1 time(s)"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": "24"}', "SubnetLen",
     'expected an integer, got string "24"'),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 24.5}', "SubnetLen", "expected an integer"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": true}', "SubnetLen",
     "expected an integer, got boolean true"),
    ('{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}', "SubnetMin",
     "10.1.0.0 is outside Network 10.0.0.0/16"),
    ('{"Network": "10.0.0.0/16", "SubnetMin": "10.0.1.7"}', "SubnetMin",
     "10.0.1.7 is not on a /24 subnet boundary"),
    ('{"Network": "10.0.0.0/16", "SubnetMax": "x"}', "SubnetMax", "'x' is not an IP address"),
    ('{"Network": "10.0.0.0/16", "SubnetMax": "10.0.0.128"}', "SubnetMax",
     "not on a /24 subnet boundary"),
    ('{"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.8.0"}',
     "SubnetMin", "10.0.9.0 is above SubnetMax 10.0.8.0"),
    ('{"Network": "10.0.0.0/16", "Backend": {"VNI": 16777216}}', "Backend.VNI",
     "16777216 is outside 0..16777215"),
    ('{"Network": "10.0.0.0/16", "Backend": {"VNI": -1}}', "Backend.VNI", "outside"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Port": 65536}}', "Backend.Port",
     "65536 is outside 0..65535"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}}', "Backend.Type",
     "backend type 'host-gw' is not supported: vxnet implements vxlan only"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Type": "udp"}}', "Backend.Type", "'udp'"),
    ('{"Network": "10.0.0.0/16", "Backend": "vxlan"}', "Backend",
     'expected an object, got string "vxlan"'),
    ('{"Network": "10.0.0.0/16", "Backend": {"GBP": "yes"}}', "Backend.GBP",
     "expected a boolean"),
    ('{"Network": "10.0.0.0/16", "Backend": {"MTU": 100}}', "Backend.MTU", "outside 576..65535"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Neighbours": "lazy"}}', "Backend.Neighbours",
     "'lazy' is not one of up-front, on-demand"),
    ('{"Network": "10.0.0.0/16", "Backend": {"FDB": true}}', "Backend.FDB", "expected a string"),
    ('{"Network": "10.0.0.0/16", "EnableIPv6": true}', "IPv6Network",
     "missing (required when EnableIPv6 is true)"),
    ('{"EnableIPv6": true, "EnableIPv4": false, "IPv6Network": "10.0.0.0/8"}', "IPv6Network",
     "not an IPv6 network"),
    ('{"EnableIPv6": true, "EnableIPv4": false, "IPv6Network": "fd00::/48", '
     '"IPv6SubnetLen": 127}', "IPv6SubnetLen", "/127 is too long; at most /126"),
    ('{"EnableIPv6": true, "EnableIPv4": false, "IPv6Network": "fd00::/48", '
     '"IPv6SubnetMin": "fd01::"}', "IPv6SubnetMin", "outside Network fd00::/48"),
    ('{"EnableIPv4": false}', "EnableIPv4", "IPv4 and IPv6 are both disabled"),
    ('{"EnableIPv4": "no", "Network": "10.0.0.0/16"}', "EnableIPv4", "expected a boolean"),
    ('{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", '
     '"Backend": {"MTU": 1300}}', "Backend.MTU", "less than IPv6's minimum 1280"),
]


@pytest.mark.parametrize(("doc", "key", "fragment"), ERRORS)
def test_validation_errors(doc, key, fragment):
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert exc.value.key == key
    assert fragment in str(exc.value)
    assert str(exc.value).startswith(f"network config: {key}: ")
