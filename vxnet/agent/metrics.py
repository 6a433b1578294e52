"""Prometheus metrics of one agent. Counts the agent already keeps are read at scrape time by a
collector (no second bookkeeping); durations are histograms fed by the agent's hooks."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vxnet.agent.state import AgentState
from vxnet.kernel.table import PassResult

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _AgentCollector(Collector):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        status = self.state.source.status()
        ready = GaugeMetricFamily("vxnet_ready", "1 once subnet.env is written and the first "
                                  "full sync is in the kernel")
        ready.add_metric([], 1 if status.ready else 0)
        yield ready
        a = status.running
        if a is None:
            return
        desired = GaugeMetricFamily("vxnet_peers_desired", "Peers the store says to program",
                                    labels=["family"])
        programmed = GaugeMetricFamily("vxnet_peers_programmed", "Peers fully in the kernel",
                                       labels=["family"])
        rejected = GaugeMetricFamily("vxnet_peers_rejected", "Peers skipped as invalid",
                                     labels=["family"])
        writes = CounterMetricFamily("vxnet_kernel_writes", "Kernel writes made",
                                     labels=["family", "table"])
        failing = GaugeMetricFamily("vxnet_kernel_writes_failing", "Kernel entries whose last "
                                    "write failed (retried with backoff; the error is logged)",
                                    labels=["family"])
        misses = CounterMetricFamily("vxnet_neighbour_misses", "Kernel misses on the VXLAN "
                                     "device (on-demand mode): l2 (FDB) or l3 (neighbour), "
                                     "answered, unknown (no node owns it) or limited (over the "
                                     "answer rate; the kernel asks again)",
                                     labels=["family", "kind", "outcome"])
        answered = GaugeMetricFamily("vxnet_on_demand_entries", "Entries the kernel holds "
                                     "from answered misses", labels=["family", "table"])
        for version, fam in a.overlays.items():
            label, plane = f"ipv{version}", fam.plane
            desired.add_metric([label], plane.peers)
            programmed.add_metric([label], plane.programmed)
            rejected.add_metric([label], len(plane.rejected))
            for table, n in plane.writes.items():
                writes.add_metric([label, table], n)
            failing.add_metric([label], plane.failing)
            if plane.on_demand is not None:
                for what, n in plane.on_demand.misses.items():
                    misses.add_metric([label, *what.split()], n)
                for table, n in plane.on_demand.entries.items():
                    answered.add_metric([label, table], n)
        yield from (desired, programmed, rejected, writes, failing, misses, answered)
        store, devices = a.store, [f.device for f in a.overlays.values()]
        counters = {
            "vxnet_leases_invalid": ("Invalid lease keys/values seen (each skipped)",
                                     a.invalid_total),
            "vxnet_store_reconnects": ("etcd connections dropped and re-made", store.reconnects),
            "vxnet_watch_restarts": ("Lease watches resumed or re-listed", store.watch_restarts),
            "vxnet_lease_renewals": ("Subnet lease refreshes", store.renewals),
            "vxnet_lease_losses": ("Subnet leases lost and re-acquired", store.losses),
            "vxnet_lease_takeovers": ("Foreign writes to this node's lease key, each put back",
                                      store.takeovers),
            "vxnet_netlink_events": ("Netlink notifications read", a.monitor.events),
            "vxnet_netlink_overflows": ("Netlink notification overflows (each a full resync)",
                                        a.monitor.overflows),
            "vxnet_device_repairs": ("VXLAN devices recreated (deleted, or changed in a way "
                                     "the kernel cannot undo in place)",
                                     sum(d.repairs for d in devices)),
            "vxnet_device_drift_repairs": ("VXLAN device attributes put back in place (MTU, "
                                           "MAC, learning, up, checksum offload)",
                                           sum(d.drift_repairs for d in devices)),
            "vxnet_underlay_changes": ("External interface, address or MTU changes followed",
                                       a.node.underlay_changes),
            "vxnet_kernel_pass_errors": ("Kernel passes that raised (each retried after a full "
                                         "resync)", a.reconciler.errors),
            "vxnet_masquerade_repairs": ("Masquerade tables re-applied after drift",
                                         a.masquerade_repairs),
        }
        if a.allow is not None:
            counters.update({
                "vxnet_vxlan_dropped_packets": ("VXLAN packets dropped: not from a peer's public "
                                                "IP (sources in /v1/state)",
                                                a.allow.refused_packets),
                "vxnet_vxlan_allowlist_repairs": ("VXLAN allow-list tables or sets put back "
                                                  "after someone else changed them",
                                                  a.allow.repairs)})
        if a.forward is not None:
            counters["vxnet_forward_rules_repairs"] = (
                "FORWARD accept rules (iptables chain VXNET-FWD) written again after someone "
                "else changed or removed them", a.forward.repairs)
            in_place = GaugeMetricFamily("vxnet_forward_rules_in_place", "1 while the FORWARD "
                                         "accept rules are as written, as of the last check")
            in_place.add_metric([], 1 if a.forward.in_place else 0)
            yield in_place
        watching = GaugeMetricFamily("vxnet_store_watching", "1 while the watch of everyone's "
                                     "leases (etcd) or Nodes (kube mode) is open and answering")
        watching.add_metric([], 1 if store.watching else 0)
        yield watching
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        restarts = CounterMetricFamily("vxnet_task_restarts", "Long-running tasks restarted "
                                       "after failing (the agent itself keeps running)",
                                       labels=["task"])
        for task, n in sorted(a.tasks.restarts.items()):
            restarts.add_metric([task], n)
        yield restarts
        if a.health is not None:
            health = GaugeMetricFamily("vxnet_peer_health", "Peers by probe verdict: healthy, "
                                       "unhealthy (see /v1/health for why), unknown (not probed "
                                       "yet)", labels=["state"])
            for state in ("healthy", "unhealthy", "unknown"):
                health.add_metric([state], a.health.counts.get(state, 0))
            yield health
            causes = GaugeMetricFamily("vxnet_peers_unhealthy", "Unhealthy peers by cause: "
                                       "overlay_blocked (VXLAN dropped between the nodes), "
                                       "allowlist_refused (this node's allow-list drops them), "
                                       "mtu, underlay_unreachable, wrong_source (the lease's "
                                       "address is stale or NATed); /v1/health says more",
                                       labels=["cause"])
            for cause, n in a.health.causes.items():
                causes.add_metric([cause], n)
            yield causes
            sent = CounterMetricFamily("vxnet_probes_sent", "ICMP echo requests sent to peers")
            sent.add_metric([], a.health.sent)
            yield sent


class AgentMetrics:
    """The registry, and the runtime's observer of kernel passes (the Reconciler's Observer)."""

    def __init__(self, state: AgentState) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_AgentCollector(state))
        self.resync = Histogram("vxnet_resync_duration_seconds", "Full resync passes (dump, "
                                "diff, write)", ["family", "kind"], buckets=_BUCKETS,
                                registry=self.registry)
        self.loop_lag = Histogram("vxnet_event_loop_lag_seconds", "How long the agent's event "
                                  "loop was held by one step, sampled every 50 ms",
                                  buckets=_BUCKETS, registry=self.registry)
        self.probe_rtt = Histogram("vxnet_probe_rtt_seconds", "Round trips of answered peer "
                                   "probes, by path (overlay, underlay, mtu)", ["path"],
                                   buckets=_BUCKETS, registry=self.registry)
        self.probe_failures = Counter("vxnet_probe_failures", "Peer probes (with their retry) "
                                      "that got no answer, by path", ["path"],
                                      registry=self.registry)
        self.event_latency = Histogram("vxnet_event_to_kernel_seconds", "From a store event "
                                       "arriving to its kernel writes done", buckets=_BUCKETS,
                                       registry=self.registry)

    def on_pass(self, version: int, kind: str, result: PassResult) -> None:
        if kind != "event":
            self.resync.labels(f"ipv{version}", kind).observe(result.seconds)

    def on_event_latency(self, seconds: float) -> None:
        self.event_latency.observe(seconds)

    def on_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    def on_probe(self, path: str, rtt: float | None) -> None:
        if rtt is None:
            self.probe_failures.labels(path).inc()
        else:
            self.probe_rtt.labels(path).observe(rtt)

    def render(self) -> bytes:
        return generate_latest(self.registry)
