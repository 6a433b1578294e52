"""Device checks that need no kernel."""

import ipaddress

import pytest

from vxnet.kernel.device import DeviceError, DeviceSpec, default_name, ensure_device


class NoKernel:
    def __getattr__(self, name):
        raise AssertionError(f"the kernel was asked ({name})")


@pytest.mark.parametrize("vni, version", [(10_000_000, 4), (10_000, 6)])
def test_a_vni_too_large_for_the_device_name_is_one_clear_error(vni, version):
    name = default_name(vni, version)
    spec = DeviceSpec(name, vni, 8472, ipaddress.ip_address("198.51.100.11"), 2,
                      "0e:00:00:00:00:01", 1450, ipaddress.ip_network("10.244.1.0/24"))
    with pytest.raises(DeviceError, match=f"device name '{name}' is longer than the kernel's 15"):
        ensure_device(NoKernel(), spec)


def test_the_largest_names_that_fit():
    assert len(default_name(9_999_999, 4)) == len(default_name(9_999, 6)) == 15
