"""The probe targets follow the peers change by change, and are made again in full only when
a device changed (or the data plane's journal no longer reaches back)."""

import ipaddress as ipa
from types import SimpleNamespace

from tests.unit.kernel.test_dataplane import peer, plane
from vxnet.agent.peers import HealthTargets
from vxnet.kernel.admission import JOURNAL
from vxnet.kernel.peer import Peer


def overlay(n):
    dp = plane()
    dp.set_peers([peer(i) for i in range(2, 2 + n)])
    return SimpleNamespace(plane=dp, device=SimpleNamespace(mtu=1450, port=8472))


def test_only_what_changed_is_named_until_a_device_changes():
    ov = overlay(3)
    allow = SimpleNamespace(refused_sources={}, refused_lately=lambda s: frozenset(
        allow.refused_sources))
    targets = HealthTargets({4: ov}, allow)
    first = targets()
    assert first.changed is None and list(first.targets) == ["ipv4 p2", "ipv4 p3", "ipv4 p4"]
    assert targets().changed == []
    ov.plane.remove_peer("p3")
    second = targets()
    assert second.changed == ["ipv4 p3"] and list(second.targets) == ["ipv4 p2", "ipv4 p4"]
    ov.device.mtu = 1350
    third = targets()
    assert third.changed is None and {t.mtu for t in third.targets.values()} == {1350}
    allow.refused_sources = {"198.51.100.4": 7}  # a verdict, not a target: nothing remade
    fourth = targets()
    assert fourth.changed == [] and fourth.refused == {ipa.ip_address("198.51.100.4")}
    assert targets().changed == []


def test_a_peer_that_did_not_change_keeps_its_target():
    """Under churn (a MAC rewritten) the target stays; a moved peer gets a new one."""
    ov = overlay(3)
    targets = HealthTargets({4: ov}, None)
    first = dict(targets().targets)
    ov.plane.add_peer(Peer.of("p2", ipa.ip_network("10.244.2.0/24"),
                              ipa.ip_address("198.51.100.2"), "0e:00:00:00:02:22"))
    ov.plane.add_peer(Peer.of("p3", ipa.ip_network("10.244.3.0/24"),
                              ipa.ip_address("198.51.100.99"), "0e:00:00:00:00:03"))
    view = targets()
    assert sorted(set(view.changed)) == ["ipv4 p2", "ipv4 p3"]
    second = view.targets
    assert second["ipv4 p2"] is first["ipv4 p2"] and second["ipv4 p4"] is first["ipv4 p4"]
    assert second["ipv4 p3"] is not first["ipv4 p3"]
    assert second["ipv4 p3"].public_ip == ipa.ip_address("198.51.100.99")


def test_more_changes_than_the_journal_holds_make_every_target_again():
    ov = overlay(3)
    targets = HealthTargets({4: ov}, None)
    targets()
    for _ in range(JOURNAL // 2 + 1):  # two changes each
        ov.plane.remove_peer("p3")
        ov.plane.add_peer(peer(3))
    ov.plane.remove_peer("p4")
    view = targets()
    assert view.changed is None and list(view.targets) == ["ipv4 p2", "ipv4 p3"]
    assert targets().changed == []
