import ipaddress as ipa

from vxnet.kernel.mac import vtep_mac


def test_ipv4_encoding_is_readable_and_stable():
    assert vtep_mac(ipa.ip_network("10.244.5.0/24")) == "0e:18:0a:f4:05:00"
    assert vtep_mac(ipa.ip_network("10.244.5.0/25")) != vtep_mac(ipa.ip_network("10.244.5.0/24"))


def test_every_mac_is_locally_administered_unicast():
    nets = [ipa.ip_network(f"10.244.{i}.0/24") for i in range(256)] + [
        ipa.ip_network(f"fd00:10:244:{i:x}::/64") for i in range(256)]
    macs = {vtep_mac(n) for n in nets}
    assert len(macs) == len(nets)
    for m in macs:
        first = int(m[:2], 16)
        assert first & 0b10 and not first & 0b1
