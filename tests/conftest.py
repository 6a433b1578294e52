"""Fixtures shared by every test layer: a real etcd per test, started by vxnet's own code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vxnet.lab.etcd import EtcdServer
from vxnet.store.etcd import Etcd
from vxnet.store.paths import Paths

# Every test under these builds network namespaces. A `pytestmark` in a conftest.py is not
# read (a conftest is not a test module), so the marker is given here, by path.
NETNS_DIRS = tuple(Path(__file__).parent / d for d in ("e2e", "integration/kernel"))


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root (network namespaces)")
    skip_etcd = pytest.mark.skip(reason="needs Debian's etcd-server (run `make test`)")
    for item in items:
        if any(item.path.is_relative_to(d) for d in NETNS_DIRS):
            item.add_marker(pytest.mark.netns)
        if "netns" in item.keywords and os.geteuid() != 0:
            item.add_marker(skip_root)
        if "etcd_server" in getattr(item, "fixturenames", ()) and not shutil.which("etcd"):
            item.add_marker(skip_etcd)


@pytest.fixture
def etcd_server(tmp_path):
    srv = EtcdServer(workdir=tmp_path / "etcd")
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
async def etcd(etcd_server):
    client = Etcd(etcd_server.endpoint, timeout=2.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def paths(request):
    # a prefix of its own per test: tests never see each other's keys
    return Paths(f"/vxnet-test/{request.node.name.replace('[', '-').replace(']', '')}")
