"""Issue 22: the alert rules vxnet ships (deploy/prometheus/vxnet-rules.yaml), in a real Prometheus
(Debian's) scraping a 3-node lab cluster the way an operator's would. Prometheus runs in the lab's
fabric namespace (the underlay switch), scrapes each agent's /metrics at its node's underlay
address (the agents listen on --healthz-ip 0.0.0.0, as the DaemonSet's do) and is queried there.

The rules are loaded as shipped except for their durations, which a test cannot wait for: this
test renders a copy with every `for:` divided by 30 (the peer probes run every 2 s here instead
of every 60 s; at least 2 s) and every range window set to 30 s (long enough for several scrapes
at 1 s and several probe rounds at 2 s). The expressions, labels and annotations are the shipped
ones; promtool's unit tests (tests/prometheus/vxnet-rules.test.yaml) check the real durations.

Scenarios: VXLAN blocked between two nodes (an nft drop in one node's namespace) fires
VxnetPeerUnhealthy{cause="overlay_blocked"} for both and nothing for the third (or
cause="allowlist_refused" for a node whose own allow-list refused the other's packets in the last
hour, as it can for a moment while the lab starts: each alert's cause is its agent's diagnosis),
and clears when the block is lifted; an agent stopped (SIGTERM) fires its VxnetAgentDown; etcd
stopped fires VxnetStoreUnreachable (vxnet_store_watching 0) for the running agents and clears
when it is back; the stopped agent restarted fires nothing on its way up, not even its store
alert. Also `promtool check metrics` on a live scrape of an agent."""

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
# VXLAN blocked between two nodes, as each node's agent may diagnose it, with its alert's summary
OVERLAY_CAUSES = {"overlay_blocked": "unreachable through the overlay, fine on the underlay",
                  "allowlist_refused": "refused by its own VXLAN allow-list"}


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

    def last_evaluation(self) -> list[str]:
        """When each rule group's last evaluation started."""
        return [g["lastEvaluation"] for g in self.api("/api/v1/rules")["groups"]]

    def alerts(self, state: str = "firing") -> dict[tuple[str, str, str], dict]:
        """Alerts in `state`, by (alertname, node, cause), but for the load-dependent ones."""
        return {(a["labels"]["alertname"], a["labels"].get("node", ""),
                 a["labels"].get("cause", "")): a
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
                     and len(prom.query("sum by (node) (vxnet_peers_unhealthy) == 0")) == 3
                     and len(prom.query("count by (node) (vxnet_peers_unhealthy) == 5")) == 3
                     and len(prom.query("vxnet_store_watching == 1")) == 3,
                     DEADLINE, "every peer healthy and every watch open, as Prometheus sees it")
            # ... the rules evaluated again since (on what the queries above saw) ...
            before = prom.last_evaluation()
            wait_for(lambda: all(a != b for a, b in zip(prom.last_evaluation(), before,
                                                        strict=True)),
                     DEADLINE, "the rules evaluated on the scrapes")
            # ... and nothing firing or even pending in a healthy cluster
            assert prom.alerts("firing") == {} and prom.alerts("pending") == {}

            # 1. VXLAN from node1 dropped in node2's namespace: both lose each other's overlay
            n2.ns.run("nft", "-f", "-", input="\n".join([
                "table inet vxt-block {", "chain input {",
                "type filter hook input priority -300;",
                f"ip saddr {n1.ip} udp dport 8472 drop", "}", "}"]))
            t0 = time.monotonic()
            seen: dict[tuple[str, str, str], float] = {}

            def blocked_fire() -> bool:
                for key in prom.alerts("firing"):
                    seen.setdefault(key, time.monotonic() - t0)
                return {k[1] for k in seen if k[0] == "VxnetPeerUnhealthy"} >= {"node1", "node2"}
            wait_for(blocked_fire, DEADLINE, "VxnetPeerUnhealthy for node1 and node2")
            firing = prom.alerts("firing")
            for key in sorted(firing):
                timings.append((f"VXLAN blocked -> {key[0]}{{node={key[1]}, "
                                f"cause={key[2]}}} firing", seen[key]))
            assert sorted((k[0], k[1]) for k in firing) == [
                ("VxnetPeerUnhealthy", "node1"), ("VxnetPeerUnhealthy", "node2")], \
                f"only the two blocked peers' alerts, one each: {sorted(firing)}"
            for (_, node, cause), a in firing.items():
                # the cause is the agent's own diagnosis: overlay_blocked, or allowlist_refused
                # if this node's allow-list refused the peer's packets in the last hour (as a
                # node that joined while its peers already sent may have, for a moment)
                n = {"node1": n1, "node2": n2}[node]
                assert cause in OVERLAY_CAUSES, (node, cause)
                assert a["labels"]["severity"] == "critical"
                assert a["labels"]["instance"] == f"{n.ip}:{API_PORT}"
                assert "diagnosis" not in a["labels"]  # the cause is the metric's own label
                assert a["annotations"]["description"].startswith(
                    f"1 peer(s) probed by {n.ip}:{API_PORT} (node {node}) have been unhealthy")
                assert a["annotations"]["summary"] == (
                    f"1 peer(s) of {n.ip}:{API_PORT} (node {node}) {OVERLAY_CAUSES[cause]}")
                assert "`vxnet status`" in a["annotations"]["runbook"]
                health = json.loads(c.api(n, "/v1/health")[1])["peers"]
                why = next(p["diagnosis"] for p in health.values() if p["state"] == "unhealthy")
                assert why.startswith("overlay blocked, underlay fine"), why
                assert ("this node's VXLAN allow-list" in why) == (cause == "allowlist_refused"), \
                    (node, cause, why)

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

            # 3. etcd stopped: the running agents have no lease watch
            assert c.etcd is not None
            c.etcd.stop()
            t0 = time.monotonic()
            want = {("VxnetStoreUnreachable", "node1", ""), ("VxnetStoreUnreachable", "node2", "")}
            seen.clear()

            def both_fire() -> bool:
                for key in prom.alerts("firing"):
                    seen.setdefault(key, time.monotonic() - t0)
                return want <= seen.keys()
            wait_for(both_fire, DEADLINE, "VxnetStoreUnreachable for node1 and node2")
            for key in sorted(want):
                timings.append((f"etcd stopped -> {key[0]}{{node={key[1]}}} firing", seen[key]))
            assert c.api(n1, "/readyz")[0] == 200  # an etcd outage leaves the node ready
            assert {s["metric"]["node"] for s in prom.query("vxnet_store_watching == 0")} \
                == {"node1", "node2"}
            a = prom.alerts("firing")[("VxnetStoreUnreachable", "node1", "")]
            assert a["labels"]["severity"] == "warning"
            assert a["annotations"]["summary"] == (
                f"vxnet agent on {n1.ip}:{API_PORT} (node node1) has no working watch of the "
                "cluster's leases")
            c.etcd.start()
            t0 = time.monotonic()
            wait_for(lambda: not [k for k in prom.alerts("firing")
                                  if k[0] == "VxnetStoreUnreachable"], DEADLINE,
                     "VxnetStoreUnreachable cleared with etcd back")
            timings.append(("etcd back -> VxnetStoreUnreachable cleared", time.monotonic() - t0))
            assert set(prom.alerts("firing")) == {("VxnetAgentDown", "node3", "")}

            # 4. node3's agent back (it reuses its lease and the kernel's state): all clear,
            # and nothing new fires on its way up (its watch opens at once)
            c.start_agent(n3)
            c.wait_ready(n3)
            t0 = time.monotonic()
            fired: set[tuple[str, str, str]] = set()

            def all_clear() -> bool:
                fired.update(prom.alerts("firing"))
                return not prom.alerts("firing") and not prom.alerts("pending")
            wait_for(all_clear, DEADLINE, "no alert once node3's agent is back")
            timings.append(("node3's agent restarted -> no alert firing or pending",
                            time.monotonic() - t0))
            assert fired <= {("VxnetAgentDown", "node3", "")}, sorted(fired)
            assert len(prom.query('vxnet_store_watching{node="node3"} == 1')) == 1
        finally:
            prom.stop()
            print("\n".join(f"  {what}: {secs:.1f} s" for what, secs in timings))
