"""The probe targets are rebuilt only when what they are made of changed."""

import ipaddress as ipa
from types import SimpleNamespace

from vxnet.agent.peers import HealthTargets
from vxnet.kernel.peer import Peer


def overlay(n):
    peers = {f"p{i}": Peer.of(f"p{i}", ipa.ip_network(f"10.244.{i}.0/24"),
                           ipa.ip_address(f"198.51.100.{i}"), f"0e:00:00:00:00:{i:02x}")
             for i in range(2, 2 + n)}
    return SimpleNamespace(plane=SimpleNamespace(peers=peers, generation=0),
                           device=SimpleNamespace(mtu=1450, port=8472))


def test_the_same_list_until_a_peer_a_device_or_a_refused_source_changes():
    ov = overlay(3)
    allow = SimpleNamespace(refused_sources={}, refused_lately=lambda s: frozenset(
        allow.refused_sources))
    targets = HealthTargets({4: ov}, allow)
    first = targets()
    assert [t.key for t in first] == ["ipv4 p2", "ipv4 p3", "ipv4 p4"]
    assert targets() is first
    del ov.plane.peers["p3"]
    ov.plane.generation += 1
    second = targets()
    assert second is not first and [t.key for t in second] == ["ipv4 p2", "ipv4 p4"]
    ov.device.mtu = 1350
    third = targets()
    assert third is not second and {t.mtu for t in third} == {1350}
    allow.refused_sources = {"198.51.100.4": 7}
    fourth = targets()
    assert [t.refused_here for t in fourth] == [False, True] and targets() is fourth


def test_a_peer_that_did_not_change_keeps_its_target():
    """Under churn the list is rebuilt every second: only the changed peers' targets are new."""
    ov = overlay(3)
    targets = HealthTargets({4: ov}, None)
    first = {t.key: t for t in targets()}
    moved = Peer.of("p3", ipa.ip_network("10.244.3.0/24"), ipa.ip_address("198.51.100.99"),
                 "0e:00:00:00:00:03")
    ov.plane.peers["p3"] = moved
    ov.plane.generation += 1
    second = {t.key: t for t in targets()}
    assert second["ipv4 p2"] is first["ipv4 p2"] and second["ipv4 p4"] is first["ipv4 p4"]
    assert second["ipv4 p3"] is not first["ipv4 p3"]
    assert second["ipv4 p3"].public_ip == ipa.ip_address("198.51.100.99")
