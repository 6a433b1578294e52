"""Issue 22: the alert rules vxnet ships (deploy/prometheus/vxnet-rules.yaml), in a real Prometheus
(Debian's) scraping a 3-node lab cluster the way an operator's would. Prometheus runs in the lab's
fabric namespace (the underlay switch), scrapes each agent's /metrics at its node's underlay
address (the agents listen on --healthz-ip 0.0.0.0, as the DaemonSet's do) and is queried there.

The rules are loaded as shipped except for their durations, which a test cannot wait for: this
test renders a copy with every `for:` divided by 30 (the peer probes run every 2 s here instead
of every 60 s; at least 2 s) and every range window set to 30 s (long enough for several scrapes
at 1 s, several probe rounds at 2 s, and the agent's own etcd backoff of up to 5 s). The
expressions, labels and annotations are the shipped ones; promtool's unit tests
(tests/prometheus/vxnet-rules.test.yaml) check the real durations.

Scenarios: VXLAN blocked between two nodes (an nft drop in one node's namespace) fires
VxnetPeerUnhealthy{diagnosis="overlay_blocked"} for both and nothing for the third, and clears
when the block is lifted; an agent stopped (SIGTERM) fires its VxnetAgentDown; etcd stopped fires
VxnetStoreUnreachable for the running agents and clears when it is back. Also `promtool check
metrics` on a live scrape of an agent."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import LAB_CONFIG
from tests.waiting import wait_for
from vxnet.lab.cluster import API_PORT, Cluster, http_get

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "vxnet-rules.yaml"
PROM_PORT = 9090  # on the fabric namespace's loopback
HEALTH_INTERVAL = 2  # seconds per round of peer probes (60 by default)
FOR_DIVISOR = 30  # 60 s probe rounds in the field, 2 s here
WINDOW = "30s"
DEADLINE = 60.0  # for an alert to fire or clear; they take 5-40 s here

# What `promtool check metrics` (Prometheus 2.42) says about a live scrape of an agent: nothing
# today. A complaint it starts to make fails the test: fix the metric in vxnet/agent/metrics.py,
# or list the line here with the reason it stays.
KNOWN_LINT: set[str] = set()
# Fires on a machine too busy to turn the agents' event loops in time, whatever the scenario:
# left out where a scenario's exact set of alerts is checked.
LOAD_DEPENDENT = {"VxnetEventLoopStalling"}


def render_rules(text: str) -> str:
    """The shipped rules with the lab's durations (see the module docstring)."""
    def short_for(m: re.Match[str]) -> str:
        seconds = int(m[2]) * {"s": 1, "m": 60, "h": 3600}[m[3]]
        return f"{m[1]}{max(2, seconds // FOR_DIVISOR)}s"
    text = re.sub(r"^(\s+for: )(\d+)([smh])$", short_for, text, flags=re.M)
    return re.sub(r"\[\d+[smh]\]", f"[{WINDOW}]", text)


class Prometheus:
    """Debian's prometheus, in a namespace, from a config file and a storage dir of its own."""

    def __init__(self, netns: str, workdir: Path, targets: dict[str, str], rules: Path) -> None:
        self.netns, self.workdir = netns, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "vxnet",
                "static_configs": [{"targets": [target], "labels": {"node": node}}
                                   for node, target in targets.items()]}]}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log, "ab") as log:
            # `ip netns exec` execs the command: the PID is Prometheus' own
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "prometheus",
                 f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._ready, 30, f"Prometheus ready (log: {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            return http_get(self.netns, PROM_PORT, "/-/ready")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def api(self, path: str) -> dict:
        status, body = http_get(self.netns, PROM_PORT, path)
        assert status == 200, body
        return json.loads(body)["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api(f"/api/v1/query?query={quote(expr)}")["result"]

    def alerts(self, state: str = "firing") -> dict[tuple[str, str, str], dict]:
        """Alerts in `state`, by (alertname, node, diagnosis or cause), but for the
        load-dependent ones."""
        return {(a["labels"]["alertname"], a["labels"].get("node", ""),
                 a["labels"].get("diagnosis", a["labels"].get("cause", ""))): a
                for a in self.api("/api/v1/alerts")["alerts"]
                if a["state"] == state and a["labels"]["alertname"] not in LOAD_DEPENDENT}


def promtool_check_metrics(text: str) -> tuple[int, list[str]]:
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    return res.returncode, [line for line in (res.stdout + res.stderr).splitlines() if line]


@pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                    reason="needs Debian's prometheus package (`make setup` installs it)")
def test_shipped_alerts_fire_and_clear_in_a_real_prometheus(tmp_path):
    if not shutil.which("etcd"):
        pytest.skip("needs Debian's etcd-server (run `make test`)")
    rules = tmp_path / "vxnet-rules.yaml"
    rules.write_text(render_rules(RULES.read_text()))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    timings: list[tuple[str, float]] = []

    with Cluster("alr", config=LAB_CONFIG, workdir=tmp_path / "lab",
                 agent_args=("--resync-interval", "5", "--health-interval", str(HEALTH_INTERVAL),
                             "--healthz-ip", "0.0.0.0")) as c:
        c.start()
        n1, n2, n3 = nodes = [c.add_node(i) for i in (1, 2, 3)]
        for n in nodes:
            c.wait_ready(n)

        # what promtool's linter says about a live scrape
        code, lines = promtool_check_metrics(c.api(n1, "/metrics")[1])
        print("\n`promtool check metrics` on node1's /metrics: exit", code)
        print("\n".join(f"  {line}" for line in lines) or "  (nothing)")
        assert not [line for line in lines if "error while linting" in line], lines
        assert set(lines) <= KNOWN_LINT, sorted(set(lines) - KNOWN_LINT)

        prom = Prometheus(c.lab.fabric.name, tmp_path / "prometheus",
                          {n.name: f"{n.ip}:{API_PORT}" for n in nodes}, rules)
        try:
            prom.start()
            # every agent scraped, the rules evaluated, every peer probed healthy ...
            wait_for(lambda: len(prom.query('up{job="vxnet"} == 1')) == 3, DEADLINE,
                     "all three agents scraped")
            wait_for(lambda: len(prom.query('vxnet_peer_health{state="healthy"} == 2')) == 3
                     and len(prom.query("instance:vxnet_peers_unhealthy:max == 0")) == 3,
                     DEADLINE, "every peer healthy, as Prometheus sees it")
            # ... and nothing firing or even pending in a healthy cluster
            assert prom.alerts("firing") == {} and prom.alerts("pending") == {}

            # 1. VXLAN from node1 dropped in node2's namespace: both lose each other's overlay
            n2.ns.run("nft", "-f", "-", input="\n".join([
                "table inet vxt-block {", "chain input {",
                "type filter hook input priority -300;",
                f"ip saddr {n1.ip} udp dport 8472 drop", "}", "}"]))
            t0 = time.monotonic()
            want = {("VxnetPeerUnhealthy", "node1", "overlay_blocked"),
                    ("VxnetPeerUnhealthy", "node2", "overlay_blocked")}
            seen: dict[tuple[str, str, str], float] = {}

            def both_fire() -> bool:
                for key in prom.alerts("firing"):
                    seen.setdefault(key, time.monotonic() - t0)
                return want <= seen.keys()
            wait_for(both_fire, DEADLINE, "VxnetPeerUnhealthy for node1 and node2")
            for key in sorted(want):
                timings.append((f"VXLAN blocked -> {key[0]}{{node={key[1]}, "
                                f"diagnosis={key[2]}}} firing", seen[key]))
            firing = prom.alerts("firing")
            assert set(firing) == want, f"only the two blocked peers' alerts: {sorted(firing)}"
            a = firing[("VxnetPeerUnhealthy", "node1", "overlay_blocked")]
            assert a["labels"]["severity"] == "critical"
            assert a["labels"]["instance"] == f"{n1.ip}:{API_PORT}"
            assert a["annotations"]["summary"] == (
                f"1 peer(s) of {n1.ip}:{API_PORT} (node node1) unreachable through the overlay, "
                "fine on the underlay")
            assert f"curl http://{n1.ip}:{API_PORT}/v1/health" in a["annotations"]["runbook"]
            # the agents agree (the exact per-peer diagnosis is theirs)
            health = json.loads(c.api(n1, "/v1/health")[1])["peers"]
            assert next(p["diagnosis"] for p in health.values() if p["state"] == "unhealthy") \
                .startswith("overlay blocked, underlay fine")

            n2.ns.run("nft", "delete", "table", "inet", "vxt-block")
            t0 = time.monotonic()
            wait_for(lambda: not prom.alerts("firing") and not prom.alerts("pending"), DEADLINE,
                     "the peer alerts cleared once VXLAN passes again")
            timings.append(("block lifted -> no alert firing or pending", time.monotonic() - t0))

            # 2. node3's agent stopped as systemd or the kubelet would (SIGTERM)
            assert c.stop_agent(n3) == 0
            t0 = time.monotonic()
            wait_for(lambda: ("VxnetAgentDown", "node3", "") in prom.alerts("firing"), DEADLINE,
                     "VxnetAgentDown for node3")
            timings.append(("node3's agent stopped -> VxnetAgentDown{node=node3} firing",
                            time.monotonic() - t0))
            firing = prom.alerts("firing")
            # its kernel still answers probes: no peer alert for it
            assert set(firing) == {("VxnetAgentDown", "node3", "")}, sorted(firing)
            a = firing[("VxnetAgentDown", "node3", "")]
            assert a["labels"]["severity"] == "critical"
            assert a["annotations"]["summary"] == (
                f"vxnet agent on {n3.ip}:{API_PORT} (node node3) is down")

            # 3. etcd stopped: the running agents cannot keep their lease watch up
            assert c.etcd is not None
            c.etcd.stop()
            t0 = time.monotonic()
            want = {("VxnetStoreUnreachable", "node1", ""), ("VxnetStoreUnreachable", "node2", "")}
            seen.clear()
            wait_for(both_fire, DEADLINE, "VxnetStoreUnreachable for node1 and node2")
            for key in sorted(want):
                timings.append((f"etcd stopped -> {key[0]}{{node={key[1]}}} firing", seen[key]))
            assert c.api(n1, "/readyz")[0] == 200  # an etcd outage leaves the node ready
            c.etcd.start()
            t0 = time.monotonic()
            wait_for(lambda: not [k for k in prom.alerts("firing")
                                  if k[0] == "VxnetStoreUnreachable"], DEADLINE,
                     "VxnetStoreUnreachable cleared with etcd back")
            timings.append(("etcd back -> VxnetStoreUnreachable cleared", time.monotonic() - t0))
            assert set(prom.alerts("firing")) == {("VxnetAgentDown", "node3", "")}

            # 4. node3's agent back (it reuses its lease and the kernel's state): all clear
            c.start_agent(n3)
            c.wait_ready(n3)
            t0 = time.monotonic()
            wait_for(lambda: not prom.alerts("firing") and not prom.alerts("pending"), DEADLINE,
                     "no alert once node3's agent is back")
            timings.append(("node3's agent restarted -> no alert firing or pending",
                            time.monotonic() - t0))
        finally:
            prom.stop()
            print("\n".join(f"  {what}: {secs:.1f} s" for what, secs in timings))
