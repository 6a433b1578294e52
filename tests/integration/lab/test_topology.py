"""The lab cleans up after itself, even when its process is terminated."""

import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns

SCRIPT = """
import signal
from vxnet.lab.topology import Lab
with Lab("sigterm") as lab:
    node = lab.add_node(1)
    print(lab.fabric.name, node.ns.name, flush=True)
    signal.pause()  # until terminated
"""


def test_a_terminated_lab_process_removes_its_namespaces():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        names = proc.stdout.readline().split()
        assert len(names) == 2, names
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
