"""Peer validation, table-driven: only a peer whose lease could be a real node's is programmed."""

import ipaddress as ipa

import pytest

from vxnet.kernel.peer import Peer, PeerError, Rules, check_peer

OWN = frozenset({ipa.ip_address("198.51.100.11"), ipa.ip_address("2001:db8:100::11")})


def check(public_ip: str, *, subnet: str = "10.244.2.0/24", vni: int = 1,
          mac: str = "0e:0a:f4:02:00:00"):
    ip = ipa.ip_address(public_ip)
    net = ipa.ip_network(subnet)
    p = Peer.of("k", net, ip, mac, vni)
    check_peer(p, Rules.of(net.version, ip.version, ipa.ip_network("10.244.1.0/24"),
                           ipa.ip_network("10.244.0.0/16"), 1, OWN))
    return p


@pytest.mark.parametrize(("public_ip", "why"), [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("224.0.0.1", "multicast"),
    ("239.1.1.1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("169.254.1.1", "link-local"),
    ("198.51.100.11", "this node's own"),
])
def test_impossible_ipv4_public_ips_are_rejected(public_ip, why):
    with pytest.raises(PeerError, match=why):
        check(public_ip)


@pytest.mark.parametrize(("public_ip", "why"), [
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("ff02::1", "multicast"),
    ("fe80::1", "link-local"),
    ("::ffff:198.51.100.12", "reserved"),
    ("2001:db8:100::11", "this node's own"),
])
def test_impossible_ipv6_public_ips_are_rejected(public_ip, why):
    with pytest.raises(PeerError, match=why):
        check(public_ip, subnet="fd00:10:244:2::/64")


@pytest.mark.parametrize("public_ip", ["198.51.100.12", "203.0.113.7", "10.1.2.3", "8.8.8.8",
                                       "172.16.0.1"])
def test_unicast_public_ips_pass(public_ip):
    assert check(public_ip).public_ip == ipa.ip_address(public_ip)


def test_another_vni_is_rejected():
    with pytest.raises(PeerError, match="VNI 2 is not ours"):
        check("198.51.100.12", vni=2)


@pytest.mark.parametrize(("kw", "why"), [
    ({"mac": "01:00:5e:00:00:01"}, "multicast MAC"),
    ({"mac": "00:00:00:00:00:00"}, "all-zero MAC"),
    ({"subnet": "10.245.0.0/24"}, "outside the network"),
    ({"subnet": "10.244.1.0/24"}, "overlaps our own"),
])
def test_bad_macs_and_subnets_are_rejected(kw, why):
    with pytest.raises(PeerError, match=why):
        check("198.51.100.12", **kw)


def test_one_bad_lease_does_not_disturb_the_others():
    from tests.unit.kernel.test_dataplane import peer, plane

    dp = plane(own_ips=OWN, vni=1)
    bad = [Peer.of("lo", ipa.ip_network("10.244.20.0/24"), ipa.ip_address("127.0.0.1"),
                "0e:00:00:00:00:20"),
           Peer.of("vni", ipa.ip_network("10.244.21.0/24"), ipa.ip_address("198.51.100.21"),
                "0e:00:00:00:00:21", 7)]
    dp.set_peers([peer(2), *bad, peer(3)])
    dp.resync()
    assert set(dp.peers) == {"p2", "p3"} and set(dp.rejected) == {"lo", "vni"}
    assert dp.fdb.kernel_size == 2
