"""The integer forms of ipaddress' containment tests agree with ipaddress itself."""

import ipaddress as ipa

from hypothesis import given
from hypothesis import strategies as st

from vxnet.ip import Span, contains, unsendable

nets4 = st.builds(lambda a, p: ipa.IPv4Network((a, p), strict=False),
                  st.integers(0, 2**32 - 1), st.integers(0, 32))
nets6 = st.builds(lambda a, p: ipa.IPv6Network((a, p), strict=False),
                  st.integers(0, 2**128 - 1), st.integers(0, 128))


@given(st.one_of(st.tuples(nets4, nets4), st.tuples(nets6, nets6)))
def test_contains_and_overlap_agree_with_ipaddress(pair):
    a, b = pair
    assert contains(a, b) == b.subnet_of(a)
    assert Span.of(a).overlaps(b.version, int(b.network_address), b.prefixlen) == a.overlaps(b)


@given(st.integers(0, 2**32 - 1))
def test_the_ipv4_fast_path_agrees_with_ipaddress(x):
    ip = ipa.IPv4Address(x)
    slow = ("unspecified" if ip.is_unspecified or ip in ipa.ip_network("0.0.0.0/8") else
            "loopback" if ip.is_loopback else "multicast" if ip.is_multicast else
            "broadcast" if x == 0xFFFFFFFF else "link-local" if ip.is_link_local else
            "reserved" if ip.is_reserved else None)
    assert unsendable(x, 4) == slow
