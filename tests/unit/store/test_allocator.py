import ipaddress as ipa
import random

import pytest

from vxnet.errors import ExhaustedError
from vxnet.store.allocator import choose, taken_in_pool
from vxnet.store.config import parse_config

POOL = parse_config('{"Network": "10.244.0.0/16"}').ipv4
SMALL = parse_config('{"Network": "10.0.0.0/28"}').ipv4  # /30s: 10.0.0.4, .8, .12


def n(s):
    return ipa.ip_network(s)


def test_preferred_wins_when_free_and_in_range():
    assert choose(POOL, set(), [n("10.244.7.0/24")]) == n("10.244.7.0/24")
    # taken, out of range, wrong length: ignored in favour of a random free one
    for bad in ["10.244.0.0/24", "10.245.1.0/24", "10.244.7.0/25"]:
        assert choose(POOL, {n("10.244.7.0/24")}, [n(bad)], random.Random(1)) != n(bad)
    assert choose(POOL, {n("10.244.7.0/24")}, [n("10.244.7.0/24")]) != n("10.244.7.0/24")


def test_random_choice_covers_the_range_only():
    seen = {choose(SMALL, set(), [], random.Random(i)) for i in range(50)}
    assert seen == {n("10.0.0.4/30"), n("10.0.0.8/30"), n("10.0.0.12/30")}


def test_exhaustion_message():
    taken = taken_in_pool(SMALL, [n("10.0.0.4/30"), n("10.0.0.8/30"), n("10.0.0.12/30")])
    with pytest.raises(ExhaustedError) as exc:
        choose(SMALL, taken, [])
    assert str(exc.value) == (
        "no free /30 subnet in 10.0.0.0/28: range 10.0.0.4..10.0.0.12 holds 3, 3 taken; "
        "widen Network/SubnetMin/SubnetMax or remove stale leases")


def test_taken_counts_overlaps_of_other_lengths():
    taken = taken_in_pool(POOL, [n("10.244.8.0/22"), n("10.244.20.128/25"), n("10.9.0.0/24")])
    assert n("10.244.9.0/24") in taken and n("10.244.20.0/24") in taken
    assert n("10.9.0.0/24") not in taken


def test_large_ipv6_pool_is_sampled():
    pool = parse_config('{"EnableIPv4": false, "EnableIPv6": true, '
                        '"IPv6Network": "fd00::/32"}').ipv6
    s = choose(pool, set(), [], random.Random(3))
    assert s.prefixlen == 64 and pool.in_range(s)


def test_node_id_subnets_count_from_subnet_min_and_end_with_the_range():
    import pytest

    from vxnet.errors import ExhaustedError
    from vxnet.store.allocator import node_subnet
    from vxnet.store.config import parse_config

    cfg = parse_config('{"Network": "10.244.0.0/16", "SubnetAllocation": "node-id"}')
    assert cfg.subnet_allocation == "node-id"
    assert [str(node_subnet(cfg.ipv4, n)) for n in (1, 2, 3, 255)] == [
        "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.255.0/24"]
    with pytest.raises(ExhaustedError, match="node ID 256 has no subnet"):
        node_subnet(cfg.ipv4, 256)


def test_an_unknown_allocation_policy_is_a_config_error_naming_the_key():
    import pytest

    from vxnet.errors import ConfigError
    from vxnet.store.config import parse_config

    with pytest.raises(ConfigError, match="SubnetAllocation: 'by-name' is not one of"):
        parse_config('{"Network": "10.244.0.0/16", "SubnetAllocation": "by-name"}')
    assert parse_config('{"Network": "10.244.0.0/16"}').subnet_allocation == "random"
