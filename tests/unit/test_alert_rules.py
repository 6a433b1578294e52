"""The Prometheus rules vxnet ships (deploy/prometheus/vxnet-rules.yaml) are valid, and their
promtool unit tests (tests/prometheus/vxnet-rules.test.yaml) pass: every alert fires when it
should, with its labels and annotations, and stays quiet through normal operation. Also: no
alert goes untested or undocumented. tests/e2e/test_alerts.py runs the same rules in a real
Prometheus against a lab cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vxnet.health.checker import CAUSES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "vxnet-rules.yaml"
TESTS = ROOT / "tests" / "prometheus" / "vxnet-rules.test.yaml"
AGENT_DOC = ROOT / "docs" / "agent.md"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="needs promtool (Debian's prometheus package; `make setup` installs it)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def alerts() -> list[str]:
    """Alert names in the rules file, in order, each once."""
    return list(dict.fromkeys(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)))


def alert_rules() -> list[str]:
    """Each alerting rule's text, from its `- alert:` line to the next rule."""
    text = RULES.read_text()
    starts = [m.start() for m in re.finditer(r"^\s*- (?:alert|record): ", text, re.M)]
    blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    return [b for b in blocks if re.match(r"\s*- alert: ", b)]


@needs_promtool
def test_promtool_check_rules_passes():
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    res = promtool("test", "rules", str(TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_is_unit_tested_firing_and_quiet():
    """Each alert has an evaluation where it fires and one where it must stay quiet."""
    text = TESTS.read_text()
    checks = re.findall(r"alertname: (\w+)\n\s*exp_alerts:( \[\])?", text)
    fires = {name for name, empty in checks if not empty}
    quiet = {name for name, empty in checks if empty}
    names = alerts()
    assert names, "no alerts found in the rules file"
    assert [n for n in names if n not in fires] == [], "alerts never seen firing"
    assert [n for n in names if n not in quiet] == [], "alerts never checked to stay quiet"


def test_every_alert_names_the_node_and_what_to_check():
    for block in alert_rules():
        name = re.match(r"\s*- alert: (\w+)", block)[1]  # type: ignore[index]
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.M), name
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{annotation}: ", block, re.M), (name, annotation)
        if name != "VxnetAgentsAbsent":  # no target at all: there is no node to name
            assert "$labels.instance" in block and "$labels.node" in block, name


def test_every_alert_is_documented():
    doc = AGENT_DOC.read_text()
    assert "## Alerts" in doc
    section = doc.split("## Alerts", 1)[1].split("\n## ", 1)[0]
    assert [n for n in alerts() if f"`{n}`" not in section] == []


def test_every_recording_rule_is_read_by_an_alert():
    records = re.findall(r"^\s*- record: (\S+)$", RULES.read_text(), re.M)
    exprs = "\n".join(m[1] for b in alert_rules()
                      if (m := re.search(r"^\s+expr: (.*?)^\s+(?:for|labels):", b, re.M | re.S)))
    assert [r for r in records if r not in exprs] == [], "recording rules no alert reads"


def test_every_unhealthy_cause_has_its_alert():
    """One VxnetPeerUnhealthy rule per cause the checker can give (vxnet_peers_unhealthy's
    label values), carrying it as its `cause` label."""
    rules = {}
    for block in alert_rules():
        if re.match(r"\s*- alert: VxnetPeerUnhealthy$", block, re.M):
            cause = re.search(r'vxnet_peers_unhealthy\{cause="(\w+)"\} > 0', block)
            assert cause, block
            assert re.search(rf"^\s+cause: {cause[1]}$", block, re.M), cause[1]
            rules[cause[1]] = block
    assert sorted(rules) == sorted(CAUSES)
