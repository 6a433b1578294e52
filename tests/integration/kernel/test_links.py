"""Link and address calls against iproute2's view of the same namespace: what we create, ip
shows; what ip creates, we read the same way."""

import ipaddress as ipa
import json
import socket

import pytest

from vxnet.kernel import netlink as nl
from vxnet.kernel.links import Links, open_links
from vxnet.lab.netns import ip

pytestmark = pytest.mark.netns


def link_json(ns, name):
    return json.loads(ns.ip("-d", "-j", "link", "show", name).stdout)[0]


@pytest.fixture
def node(lab):
    return lab.add_node(1)


@pytest.fixture
def links(node):
    with open_links(node.ns.name) as links:
        yield links


@pytest.mark.parametrize("v6", [False, True])
def test_a_vxlan_we_create_is_what_ip_shows(node, links: Links, v6):
    local = node.ip6 if v6 else node.ip
    links.add_vxlan("vxt", vni=4242, port=4789, parent=node.ifindex("eth0"), local=local,
                    mac="0e:18:0a:f4:05:00", mtu=1400, learning=v6, gbp=not v6, l2miss=v6)
    j = link_json(node.ns, "vxt")
    data = j["linkinfo"]["info_data"]
    assert (j["address"], j["mtu"], data["id"], data["port"], data["link"]) == (
        "0e:18:0a:f4:05:00", 1400, 4242, 4789, "eth0")
    assert data["local6" if v6 else "local"] == str(local)
    assert data["learning"] is v6 and data.get("l2miss", False) is v6
    assert data.get("gbp", False) is (not v6)
    got = links.get(name="vxt")
    assert got is not None and got.index == j["ifindex"] and not got.up
    assert got.vxlan is not None and (got.vxlan.vni, got.vxlan.port, got.vxlan.local,
                                      got.vxlan.parent, got.vxlan.learning, got.vxlan.gbp,
                                      got.vxlan.l2miss) == (
        4242, 4789, local, node.ifindex("eth0"), v6, not v6, v6)


def test_a_vxlan_ip_creates_is_read_as_ip_shows_it(node, links: Links):
    node.ns.ip("link", "add", "vxi", "address", "0e:00:00:00:00:07", "mtu", "1350", "type",
               "vxlan", "id", "7", "dstport", "8472", "local", str(node.ip), "dev", "eth0",
               "nolearning", "l2miss")
    got = links.get(name="vxi")
    j = link_json(node.ns, "vxi")
    assert got is not None and (got.index, got.name, got.mtu, got.mac, got.kind) == (
        j["ifindex"], "vxi", 1350, "0e:00:00:00:00:07", "vxlan")
    assert got.vxlan is not None and (got.vxlan.vni, got.vxlan.port, got.vxlan.local,
                                      got.vxlan.learning, got.vxlan.l2miss, got.vxlan.gbp) == (
        7, 8472, node.ip, False, True, False)
    eth0 = links.get(index=node.ifindex("eth0"))
    assert eth0 is not None and eth0.kind == "veth" and eth0.vxlan is None and eth0.up
    assert links.get(name="nosuch0") is None and links.get(index=99999) is None
    assert sorted(lk.name for lk in links.dump()) == sorted(
        lk["ifname"] for lk in json.loads(node.ns.ip("-j", "link", "show").stdout))


def test_changes_in_place_are_what_ip_shows(node, links: Links):
    links.add_vxlan("vxt", vni=1, port=8472, parent=node.ifindex("eth0"), local=node.ip,
                    mac="0e:00:00:00:00:01", mtu=1450, learning=False, gbp=False, l2miss=False)
    index = links.get(name="vxt").index
    links.set(index, mtu=1300, mac="0e:00:00:00:00:02", up=True, vxlan_learning=True)
    j = link_json(node.ns, "vxt")
    assert (j["mtu"], j["address"], "UP" in j["flags"], j["linkinfo"]["info_data"]["learning"]
            ) == (1300, "0e:00:00:00:00:02", True, True)
    links.set(index, up=False, vxlan_learning=False)
    j = link_json(node.ns, "vxt")
    assert "UP" not in j["flags"] and j["linkinfo"]["info_data"]["learning"] is False
    assert j["mtu"] == 1300  # what was not given stays
    links.delete(index)
    assert links.get(name="vxt") is None
    with pytest.raises(nl.NetlinkError) as e:
        links.delete(index)
    assert e.value.errno == 19 and e.value.entry == index


def test_addresses_agree_with_ip(node, links: Links):
    eth0 = node.ifindex("eth0")
    v4, v6 = ipa.ip_interface("10.244.3.0/32"), ipa.ip_interface("fd00:10:244:3::/128")
    links.add_address(eth0, v4)
    links.add_address(eth0, v6)
    links.add_address(eth0, v4)  # again: no error
    theirs = {(a["ifindex"], ipa.ip_interface(f"{i['local']}/{i['prefixlen']}"))
              for a in json.loads(node.ns.ip("-j", "addr", "show").stdout)
              for i in a["addr_info"]}
    assert set(links.addresses()) == theirs
    assert v6 in {a for _, a in links.addresses(eth0, 6)}
    assert {a for _, a in links.addresses(eth0, 4)} == {ipa.ip_interface(f"{node.ip}/24"), v4}
    v6_flags = next(i for a in json.loads(node.ns.ip("-j", "-6", "addr", "show", "eth0").stdout)
                    for i in a["addr_info"] if i["local"] == str(v6.ip))
    assert v6_flags.get("nodad") is True and not v6_flags.get("tentative")
    links.del_address(eth0, v4)
    links.del_address(eth0, v6)
    assert {a for _, a in links.addresses(eth0)} == {ipa.ip_interface(f"{node.ip}/24"),
                                                     ipa.ip_interface(f"{node.ip6}/64")} | {
        a for _, a in links.addresses(eth0, 6) if a.ip.is_link_local}


def test_routes_to_an_address_and_the_default_route(node, links: Links):
    eth0 = node.ifindex("eth0")
    assert links.default_route_oif(socket.AF_INET) is None
    node.ns.run("sysctl", "-qw", "net.ipv4.conf.all.forwarding=1")
    batch = "".join(f"route add 10.250.{i >> 8}.{i & 255}/32 via 198.51.100.254\n"
                    for i in range(300))  # many more-specific routes around the default one
    ip("-batch", "-", netns=node.ns.name, input=batch)
    node.ns.ip("route", "add", "default", "via", "198.51.100.254")
    assert links.default_route_oif(socket.AF_INET) == eth0
    assert links.route_oif(ipa.ip_address("198.51.100.254")) == eth0
    assert links.route_oif(node.ip) == 1  # our own address: through lo, as ip route get says
    node.ns.ip("route", "del", "default")
    with pytest.raises(nl.NetlinkError) as e:
        links.route_oif(ipa.ip_address("203.0.113.9"))
    assert e.value.errno == 101  # ENETUNREACH
