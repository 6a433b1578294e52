"""The VXLAN device's MAC, derived from the node's subnet so it survives reboots and recreation.

Encoding (locally administered, unicast; the first octet says which):
- IPv4 overlay device: `0e:LL:AA:BB:CC:DD` -- LL the prefix length, AA..DD the subnet's network
  address; e.g. 10.244.5.0/24 -> 0e:18:0a:f4:05:00. Readable, and distinct per subnet.
- IPv6 overlay device: `2e:` + the first 5 bytes of SHA-256(packed network address + length):
  an IPv6 subnet does not fit in 6 bytes, and 40 hashed bits keep collisions negligible.
"""

from __future__ import annotations

import hashlib
import ipaddress

from vxnet.ip import IPNetwork


def vtep_mac(subnet: IPNetwork) -> str:
    if isinstance(subnet, ipaddress.IPv4Network):
        octets = bytes([0x0E, subnet.prefixlen]) + subnet.network_address.packed
    else:
        digest = hashlib.sha256(subnet.network_address.packed + bytes([subnet.prefixlen])).digest()
        octets = b"\x2e" + digest[:5]
    return ":".join(f"{b:02x}" for b in octets)
