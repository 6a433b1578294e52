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


def fresh_venv(prefix: Path, package: Path) -> str:
    """A new virtual environment with `package` (a wheel or an sdist) installed: its vxnet."""
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True, timeout=120)
    subprocess.run([str(prefix / "bin" / "pip"), "install", "-q", str(package)], check=True,
                   timeout=600)
    return str(prefix / "bin" / "vxnet")


def test_the_built_wheel_installs_and_runs_an_agent(tmp_path):
    # `python -m build`: an sdist, and a wheel built from that sdist (so the sdist is complete)
    subprocess.run([sys.executable, "-m", "build", "-q", "--outdir", str(tmp_path / "dist"),
                    str(ROOT)], check=True, timeout=600, capture_output=True)
    wheel, = (tmp_path / "dist").glob("vxnet-*.whl")
    sdist, = (tmp_path / "dist").glob("vxnet-*.tar.gz")
    from_sdist = fresh_venv(tmp_path / "sdist-prefix", sdist)
    out = subprocess.run([from_sdist, "--version"], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == f"vxnet, version {__version__}"
    prefix = tmp_path / "prefix"
    vxnet = fresh_venv(prefix, wheel)
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
