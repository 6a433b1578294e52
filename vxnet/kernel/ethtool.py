"""Transmit checksum offload of a device, through the ethtool ioctl (what `ethtool -K DEV tx
off` does): the standard cure for kernels and NICs that corrupt the inner checksums of VXLAN
packets. One ioctl per call, no subprocess."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from vxnet.nsenter import in_netns

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x16, 0x17
_IFREQ = struct.Struct("16sP24x")  # ifr_name, ifr_data (a pointer), the rest of the union
_VALUE = struct.Struct("II")  # struct ethtool_value: cmd, data


def _ethtool(ifname: str, cmd: int, data: int = 0, netns: str | None = None) -> int:
    value = ctypes.create_string_buffer(_VALUE.pack(cmd, data), _VALUE.size)
    req = bytearray(_IFREQ.pack(ifname.encode(), ctypes.addressof(value)))
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, req)  # OSError (ENODEV...) to the caller
    result: int = _VALUE.unpack(value.raw)[1]  # struct hands back Any; "II" makes it an int
    return result


def tx_checksum(ifname: str, netns: str | None = None) -> bool:
    """Is transmit checksum offload on?"""
    return bool(_ethtool(ifname, ETHTOOL_GTXCSUM, netns=netns))


def set_tx_checksum(ifname: str, on: bool, netns: str | None = None) -> None:
    _ethtool(ifname, ETHTOOL_STXCSUM, int(on), netns=netns)
