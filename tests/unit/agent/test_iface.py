"""The public IP of one family: the --public-ip/--public-ipv6 override, else the interface's."""

import ipaddress as ipa

import pytest

from vxnet.agent.iface import InterfaceUnavailable, _pick
from vxnet.errors import VxnetError


def test_override_of_the_family_asked_for():
    assert _pick("198.51.100.7", [], "eth0", "--public-ip", ipa.IPv4Address) == \
        ipa.IPv4Address("198.51.100.7")
    assert _pick("2001:db8::7", [], "eth0", "--public-ipv6", ipa.IPv6Address) == \
        ipa.IPv6Address("2001:db8::7")


@pytest.mark.parametrize(("override", "flag", "cls", "why"), [
    ("nope", "--public-ip", ipa.IPv4Address, "is not an IP address"),
    ("2001:db8::7", "--public-ip", ipa.IPv4Address, "is not an IPv4 address"),
    ("198.51.100.7", "--public-ipv6", ipa.IPv6Address, "is not an IPv6 address"),
])
def test_bad_override_is_refused(override, flag, cls, why):
    with pytest.raises(VxnetError, match=f"{flag}: .* {why}"):
        _pick(override, [], "eth0", flag, cls)


def test_interface_address_without_override():
    addrs = [ipa.ip_interface("198.51.100.7/24"), ipa.ip_interface("198.51.100.8/24")]
    assert _pick(None, addrs, "eth0", "--public-ip", ipa.IPv4Address) == addrs[0].ip
    with pytest.raises(InterfaceUnavailable, match="interface eth0 has no global IPv6 address"):
        _pick(None, [], "eth0", "--public-ipv6", ipa.IPv6Address)
