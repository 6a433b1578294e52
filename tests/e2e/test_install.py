"""Issue 13's install path: the wheel, installed into a fresh virtual environment under a
temporary prefix, runs an agent in the lab -- not the development tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ipam
from vxnet import __version__
from vxnet.lab.cluster import Cluster

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]


def test_the_built_wheel_installs_and_runs_an_agent(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("vxnet-*.whl")
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True, timeout=120)
    subprocess.run([str(prefix / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   timeout=600)
    vxnet = str(prefix / "bin" / "vxnet")
    out = subprocess.run([vxnet, "--version"], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.strip() == f"vxnet, version {__version__}"
    where = subprocess.run([str(prefix / "bin" / "python"), "-c",
                            "import vxnet; print(vxnet.__file__)"], capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(prefix)), where  # the installed package, not this tree
    assert (prefix / "bin" / "vxnet-cni").exists()
    with Cluster("inst", workdir=tmp_path / "lab", vxnet=(vxnet,)) as c:
        c.start()
        node = c.add_node(1)
        c.wait_ready(node)
        assert ipam(c, node)["podSubnetThisNode"].startswith("10.244.")
        pid = c.agents[1].pid
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(str(prefix).encode() in part for part in exe), exe
