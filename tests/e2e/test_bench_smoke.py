"""The benchmarks keep working: each runs once at a tiny size (figures are not checked)."""

import re

import pytest

from bench import (
    agent_bench,
    controlplane_bench,
    dataplane_bench,
    etcd_client_bench,
    health_bench,
    kernel_bench,
    ondemand_bench,
    peer_memory,
)

pytestmark = pytest.mark.netns


def test_kernel_bench(capsys):
    assert kernel_bench.main(["--sizes", "20", "--reps", "1", "--noop-size", "20"]) == 0
    assert "no-op resync at 20 peers" in capsys.readouterr().out


def test_agent_bench(capsys):
    assert agent_bench.main(["--sizes", "20", "--reps", "1", "--latency-peers", "20",
                             "--latency-ops", "6", "--idle-peers", "20",
                             "--idle-seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "event latency" in out and "idle agent" in out
    # the agent's own account of its start, by stage, parsed from its log
    assert re.search(r"\n +20 \| +\d+\.\d\d \| +\d+\.\d\d \|", out), out


def test_dataplane_bench(capsys):
    assert dataplane_bench.main(["--mtus", "1500", "--streams", "1", "--reps", "1",
                                 "--seconds", "1"]) == 0
    assert "vxnet / flannel-hand" in capsys.readouterr().out


def test_ondemand_bench(capsys):
    assert ondemand_bench.main(["--peers", "20", "--active", "3,6", "--scan", "20"]) == 0
    out = capsys.readouterr().out
    assert "first packet, 20 peers" in out and "on-demand+fdb |     6 |" in out


def test_health_bench(capsys):
    assert health_bench.main(["--peers", "20", "--intervals", "0,2", "--seconds", "1",
                              "--warmup", "0.5"]) == 0
    assert "echo requests/s" in capsys.readouterr().out


def test_controlplane_bench(capsys):
    assert controlplane_bench.main(["--nodes", "6", "--probes", "3",
                                    "--churn-seconds", "2"]) == 0
    assert "3-member etcd cluster" in capsys.readouterr().out


def test_peer_memory(capsys):
    assert peer_memory.main(["--peers", "20"]) == 0
    assert "in all" in capsys.readouterr().out


def test_etcd_client_bench(capsys):
    assert etcd_client_bench.main(["--peers", "20", "--reps", "1"]) == 0
    assert "watching" in capsys.readouterr().out
