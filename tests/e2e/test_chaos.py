"""Chaos: five nodes on two underlay segments, a 3-member etcd, one pod per node and every
ordered pod pair pinging, while a seeded random sequence of faults (some at once) hits the
agents, etcd, the kernel and the leases. It guards every restructuring of the agent's inside.

Invariants, checked after every fault and at the end:
- no agent exits on its own;
- every pair is reachable again within HEAL_DEADLINE of the fault healing;
- faults that need not touch the data path (agent restarts, every etcd fault, MTU changes,
  peers coming and going elsewhere) lose no packet at all; a fault that does (device deleted,
  entries flushed, address moved, lease overwritten, node leaving) may lose packets only on the
  pairs of the node it hit, and only until it is back;
- at the end every kernel holds exactly the other nodes' entries and nothing else;
- agent memory stays flat.

`make test` runs one seed; `make chaos SEED="1 2 3" FAULTS=40` runs more (CHAOS_SEED and
CHAOS_FAULTS in the environment). Each fault prints one line; a failure names the seed, so the
same sequence can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import state
from tests.waiting import wait_for
from vxnet.lab.cluster import PREFIX, Cluster
from vxnet.lab.etcd import EtcdServer
from vxnet.lab.topology import UNDERLAY4, UNDERLAY4B, Node
from vxnet.store.lease import LeaseAttrs
from vxnet.store.subnetenv import SubnetEnv

pytestmark = pytest.mark.netns

SEED = int(os.environ.get("CHAOS_SEED", "1"))
HEAL_DEADLINE = 10.0  # seconds from a fault's end until every pair must answer again
PING_INTERVAL = 0.05  # per pair
RSS_GROWTH_MAX = 20 << 20  # bytes an agent may grow by over the run
PINGER = str(Path(__file__).with_name("pinger.py"))
DEV = "flannel.1"
# agents draw subnets 10.244.1-99; the temporary peers sit where no agent can be
CONFIG = {"Network": "10.244.0.0/16", "SubnetMax": "10.244.99.0", "Backend": {"Type": "vxlan"}}


@dataclass
class Window:
    """One fault's span; a lossy one excuses losses on its node's pairs until it is back."""

    name: str
    start: float
    end: float = 0.0
    lossy: set[int] = field(default_factory=set)


@dataclass
class Fault:
    name: str
    run: Callable[[Chaos, Node], Iterator[float]]  # before the yield: the fault; after: heal
    lossy: bool = False  # may lose packets on the hit node's pairs
    etcd: bool = False  # acts on etcd (at most one such fault at a time)
    on_node: bool = True  # hits the node it is given (else the cluster's etcd)

    def label(self, n: Node) -> str:
        return f"{self.name} on {n.name}" if self.on_node else self.name


class Chaos:
    def __init__(self, cluster: Cluster, rng: random.Random, workdir: Path) -> None:
        self.c, self.rng, self.workdir = cluster, rng, workdir
        self.nodes = cluster.nodes
        self.pingers: dict[int, subprocess.Popen[str]] = {}
        self.windows: list[Window] = []
        self.stopped: set[int] = set()  # agents we stopped on purpose, for now
        self.moves = 0
        self.temps = 0

    # -- pods pinging ----------

    def status_file(self, n: Node) -> Path:
        return self.workdir / f"ping-{n.name}.json"

    def start_pingers(self) -> None:
        for n in self.nodes:
            dsts = [str(m.pods[0].ip) for m in self.nodes if m is not n]
            self.pingers[n.index] = subprocess.Popen(
                ["ip", "netns", "exec", n.pods[0].ns.name, sys.executable, PINGER,
                 str(self.status_file(n)), str(PING_INTERVAL), *dsts],
                stdout=subprocess.PIPE, text=True)

    def last_answered(self) -> dict[tuple[int, int], float]:
        """(from node, to node) -> send time of the newest echo answered."""
        by_ip = {str(m.pods[0].ip): m.index for m in self.nodes}
        out = {}
        for n in self.nodes:
            try:
                got = json.loads(self.status_file(n).read_text())
            except (OSError, ValueError):
                got = {}
            for ip, t in got.items():
                out[(n.index, by_ip[ip])] = t
        return out

    def all_pairs_answer_after(self, t0: float, timeout: float) -> float:
        """Seconds from t0 until every pair answered an echo sent after t0."""
        pairs = [(a.index, b.index) for a in self.nodes for b in self.nodes if a is not b]

        def ok() -> bool:
            last = self.last_answered()
            return all(last.get(p, 0.0) > t0 for p in pairs)

        try:
            wait_for(ok, timeout, "every pod pair answering")
        except AssertionError:
            last = self.last_answered()
            raise AssertionError(f"pairs not answering {timeout}s after the fault healed: "
                                 f"{[p for p in pairs if last.get(p, 0.0) <= t0]}") from None
        return time.monotonic() - t0

    def stop_pingers(self) -> dict[tuple[int, int], dict[str, object]]:
        by_ip = {str(m.pods[0].ip): m.index for m in self.nodes}
        out = {}
        for idx, p in self.pingers.items():
            p.send_signal(signal.SIGTERM)
            for ip, res in json.loads(p.communicate(timeout=30)[0]).items():
                out[(idx, by_ip[ip])] = res
        return out

    # -- agents and etcd ----------

    def agent_alive_check(self) -> None:
        for n in self.nodes:
            if n.index in self.stopped:
                continue
            proc = self.c.agents.get(n.index)
            assert proc is not None and proc.poll() is None, (
                f"the agent on {n.name} exited by itself:\n{self.c.log(n)[-3000:]}")

    def stop_agent(self, n: Node, sig: int) -> None:
        self.stopped.add(n.index)
        self.c.stop_agent(n, sig)

    def start_agent(self, n: Node) -> None:
        self.c.start_agent(n)
        self.c.wait_ready(n, timeout=60)
        self.stopped.discard(n.index)

    def member_of(self, n: Node) -> EtcdServer:
        return self.c.etcd.member_at(state(self.c, n)["etcdEndpoint"])

    def etcd_healthy(self) -> None:
        for m in self.c.etcd.members:
            m.wait_healthy(60)

    def lease_key(self, n: Node) -> str:
        subnet = SubnetEnv.read(self.c.subnet_env(n)).subnet
        return f"{PREFIX}/subnets/{str(subnet).replace('/', '-')}"

    def put(self, key: str, value: str) -> None:
        wait_for(lambda: self.c.etcd.ctl("put", key, value, check=False).returncode == 0, 60,
                 f"etcd accepting a write to {key}")

    def delete(self, key: str) -> None:
        wait_for(lambda: self.c.etcd.ctl("del", key, check=False).returncode == 0, 60,
                 f"etcd accepting a delete of {key}")

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.index not in self.stopped]


def has_route(n: Node, subnet: str) -> bool:
    return subnet in n.ns.ip("route", "show", subnet).stdout


# -- the faults: before the yield, the fault; the yield says how long it holds; after, heal ---

def agent_kill(ch: Chaos, n: Node) -> Iterator[float]:
    ch.stop_agent(n, signal.SIGKILL)
    yield ch.rng.uniform(0.2, 2)
    ch.start_agent(n)


def agent_term(ch: Chaos, n: Node) -> Iterator[float]:
    ch.stop_agent(n, signal.SIGTERM)
    yield ch.rng.uniform(0.2, 2)
    ch.start_agent(n)


def etcd_freeze(ch: Chaos, n: Node) -> Iterator[float]:
    m = ch.rng.choice(ch.c.etcd.members)
    os.killpg(m.proc.pid, signal.SIGSTOP)
    try:
        yield ch.rng.uniform(3, 8)
    finally:
        os.killpg(m.proc.pid, signal.SIGCONT)
    ch.etcd_healthy()


def leader_kill(ch: Chaos, n: Node) -> Iterator[float]:
    leader = ch.c.etcd.leader()
    os.killpg(leader.proc.pid, signal.SIGKILL)
    leader.proc.wait()
    leader.proc = None
    yield ch.rng.uniform(1, 4)
    leader.start(wait=False)
    ch.etcd_healthy()


def quorum_loss(ch: Chaos, n: Node) -> Iterator[float]:
    gone = ch.rng.sample(ch.c.etcd.members, 2)
    for m in gone:
        m.stop()
    yield ch.rng.uniform(3, 8)
    for m in gone:
        m.start(wait=False)
    ch.etcd_healthy()


def blackhole(ch: Chaos, n: Node) -> Iterator[float]:
    """The node's packets to every etcd member dropped: connections hang, nothing answers."""
    rules = ("table inet vx-chaos {\n chain out {\n type filter hook output priority 0;\n"
             " tcp dport 2379 drop\n }\n}\n")
    n.ns.run("nft", "-f", "-", input=rules)
    try:
        yield ch.rng.uniform(4, 12)
    finally:
        n.ns.run("nft", "delete", "table", "inet", "vx-chaos")


def restart_member_frozen(ch: Chaos, n: Node) -> Iterator[float]:
    """The agent restarts while the etcd member it talks to is frozen."""
    m = ch.member_of(n)
    os.killpg(m.proc.pid, signal.SIGSTOP)
    try:
        ch.stop_agent(n, signal.SIGTERM)
        ch.start_agent(n)
        yield ch.rng.uniform(0.5, 3)
    finally:
        os.killpg(m.proc.pid, signal.SIGCONT)
    ch.etcd_healthy()


def mtu_change(ch: Chaos, n: Node) -> Iterator[float]:
    n.ns.ip("link", "set", "eth0", "mtu", "1400")
    wait_for(lambda: "mtu 1350" in n.ns.ip("link", "show", DEV).stdout, 30,
             f"{n.name}'s device following the MTU")
    yield ch.rng.uniform(0.5, 3)
    n.ns.ip("link", "set", "eth0", "mtu", "1500")
    wait_for(lambda: "mtu 1450" in n.ns.ip("link", "show", DEV).stdout, 30,
             f"{n.name}'s device following the MTU back")


def device_delete(ch: Chaos, n: Node) -> Iterator[float]:
    n.ns.ip("link", "del", DEV)
    yield 0.0


def entries_flush(ch: Chaos, n: Node) -> Iterator[float]:
    # one by one: `ip route flush` refuses routes through nexthop objects
    routes = json.loads(n.ns.ip("-j", "route", "show", "proto", "118").stdout)
    if routes:
        n.ns.run("ip", "-force", "-batch", "-", check=False,
                 input="".join(f"route del {r['dst']}\n" for r in routes))
    # the agent puts entries back while these run: a flush that "did not complete" is fine
    n.ns.ip("nexthop", "flush", "dev", DEV, check=False)
    n.ns.ip("neigh", "flush", "dev", DEV, "nud", "permanent", check=False)
    fdb = json.loads(n.ns.run("bridge", "-j", "fdb", "show", "dev", DEV).stdout)
    lines = [f"fdb del {e['mac']} dev {DEV} dst {e['dst']} self" for e in fdb
             if e["mac"] != "00:00:00:00:00:00" and "dst" in e]
    if lines:
        n.ns.run("bridge", "-force", "-batch", "-", input="\n".join(lines) + "\n", check=False)
    yield 0.0


def _move(ch: Chaos, n: Node) -> None:
    net = UNDERLAY4 if n.segment == 0 else UNDERLAY4B
    ch.moves += 1
    new = net[100 + ch.moves]
    n.ns.ip("addr", "del", f"{n.ip}/24", "dev", "eth0")
    n.ns.ip("addr", "add", f"{new}/24", "dev", "eth0")
    other = UNDERLAY4B if n.segment == 0 else UNDERLAY4
    n.ns.ip("route", "replace", str(other), "via", str(net[1]))
    n.ip = new


def address_move(ch: Chaos, n: Node) -> Iterator[float]:
    _move(ch, n)
    yield 0.0


def address_move_leader_down(ch: Chaos, n: Node) -> Iterator[float]:
    leader = ch.c.etcd.leader()
    os.killpg(leader.proc.pid, signal.SIGKILL)
    leader.proc.wait()
    leader.proc = None
    _move(ch, n)
    yield ch.rng.uniform(1, 4)
    leader.start(wait=False)
    ch.etcd_healthy()


def lease_overwrite(ch: Chaos, n: Node) -> Iterator[float]:
    """Another writer puts our lease key with its own address and MAC (no etcd lease)."""
    ch.put(ch.lease_key(n), LeaseAttrs(UNDERLAY4[199], "0e:66:00:00:00:01").encode().decode())
    yield 0.0


def leave_rejoin(ch: Chaos, n: Node) -> Iterator[float]:
    key = ch.lease_key(n)
    subnet = key.rsplit("/", 1)[1].replace("-", "/")
    ch.stop_agent(n, signal.SIGTERM)
    ch.delete(key)
    for m in ch.running():
        wait_for(lambda m=m: not has_route(m, subnet), 30, f"{m.name} dropping {subnet}")
    yield ch.rng.uniform(0.2, 2)
    ch.start_agent(n)


def temporary_peers(ch: Chaos, n: Node) -> Iterator[float]:
    """Peers come and go elsewhere while this node's agent is down: it must pick up the one
    still there when it is back, and never program the one already gone."""
    ch.stop_agent(n, signal.SIGTERM)
    temps = []
    for _ in range(2):
        ch.temps += 1
        i = ch.temps % 50
        key = f"{PREFIX}/subnets/10.244.{200 + i}.0-24"
        value = LeaseAttrs(UNDERLAY4[150 + i], f"0e:00:00:00:02:{i:02x}").encode().decode()
        ch.put(key, value)
        temps.append((key, f"10.244.{200 + i}.0/24"))
    for m in ch.running():
        for _, subnet in temps:
            wait_for(lambda m=m, s=subnet: has_route(m, s), 30, f"{subnet} on {m.name}")
    ch.delete(temps[0][0])
    yield ch.rng.uniform(0.2, 1)
    ch.start_agent(n)
    wait_for(lambda: has_route(n, temps[1][1]), 30, f"{temps[1][1]} on {n.name}")
    assert not has_route(n, temps[0][1]), "a peer gone while the agent was down came back"
    ch.delete(temps[1][0])
    for m in ch.running():
        wait_for(lambda m=m: not has_route(m, temps[1][1]), 30, f"{m.name} dropping a temp")


FAULTS = [
    Fault("agent SIGKILL + restart", agent_kill),
    Fault("agent SIGTERM + restart", agent_term),
    Fault("etcd member frozen", etcd_freeze, etcd=True, on_node=False),
    Fault("etcd leader killed", leader_kill, etcd=True, on_node=False),
    Fault("etcd quorum lost", quorum_loss, etcd=True, on_node=False),
    Fault("etcd connections black-holed", blackhole),
    Fault("agent restarted while its member is frozen", restart_member_frozen, etcd=True),
    Fault("underlay MTU 1500 -> 1400 -> 1500", mtu_change),
    Fault("VXLAN device deleted", device_delete, lossy=True),
    Fault("routes, neighbours and FDB flushed", entries_flush, lossy=True),
    Fault("underlay address moved", address_move, lossy=True),
    Fault("address moved while the leader is down", address_move_leader_down, lossy=True,
          etcd=True),
    Fault("own lease overwritten", lease_overwrite, lossy=True),
    Fault("node leaves (lease deleted) and rejoins", leave_rejoin, lossy=True),
    Fault("temporary peers come and go while the agent is down", temporary_peers),
]


def plan(rng: random.Random, count: int) -> list[list[Fault]]:
    """Every kind once per round, in a random order; now and then two at once (at most one
    on etcd, each on its own node)."""
    kinds: list[Fault] = []
    while len(kinds) < count:
        kinds += rng.sample(FAULTS, len(FAULTS))
    kinds = kinds[:count]
    steps: list[list[Fault]] = []
    while kinds:
        f = kinds.pop(0)
        if kinds and rng.random() < 0.3 and not (f.etcd and kinds[0].etcd):
            steps.append([f, kinds.pop(0)])
        else:
            steps.append([f])
    return steps


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def expected(c: Cluster) -> dict[str, tuple[str, str]]:
    """subnet -> (VTEP MAC, public IP) of every lease in etcd."""
    out = c.etcd.ctl("get", f"{PREFIX}/subnets/", "--prefix").stdout.decode().splitlines()
    leases = {}
    for key, value in zip(out[::2], out[1::2], strict=True):
        attrs = json.loads(value)
        leases[key.rsplit("/", 1)[1].replace("-", "/")] = (
            attrs["BackendData"]["VtepMAC"].lower(), attrs["PublicIP"])
    return leases


def kernel_view(n: Node) -> dict[str, set[tuple[str, ...]]]:
    routes = json.loads(n.ns.ip("-j", "route", "show", "proto", "118").stdout)
    neigh = json.loads(n.ns.ip("-j", "neigh", "show", "dev", DEV, "nud", "permanent").stdout)
    fdb = json.loads(n.ns.run("bridge", "-j", "fdb", "show", "dev", DEV).stdout)
    nexthops = json.loads(n.ns.ip("-j", "nexthop", "show", "dev", DEV).stdout or "[]")
    return {"route": {(r["dst"],) for r in routes},
            "neigh": {(e["dst"], e["lladdr"]) for e in neigh},
            "fdb": {(e["mac"], e["dst"]) for e in fdb if e["mac"] != "00:00:00:00:00:00"},
            "nexthop": {(h["gateway"],) for h in nexthops}}


def want_view(leases: dict[str, tuple[str, str]], own: str) -> dict[str, set[tuple[str, ...]]]:
    others = {s: v for s, v in leases.items() if s != own}
    return {"route": {(s,) for s in others},
            "neigh": {(s.split("/")[0], mac) for s, (mac, _) in others.items()},
            "fdb": {(mac, ip) for mac, ip in others.values()},
            "nexthop": {(s.split("/")[0],) for s in others}}


def test_chaos(tmp_path):
    rng = random.Random(SEED)
    count = int(os.environ.get("CHAOS_FAULTS", str(len(FAULTS))))
    c = Cluster("chaos", workdir=tmp_path / "lab", config=CONFIG, etcd_members=3, segments=2,
                agent_args=("--resync-interval", "5"))
    with c:
        c.start()
        for i in range(1, 6):
            c.add_node(i, segment=0 if i <= 3 else 1)
        for n in c.nodes:
            c.wait_ready(n, timeout=60)
            c.add_cni_pod(n)
        ch = Chaos(c, rng, tmp_path)
        ch.start_pingers()
        t0 = time.monotonic()
        ch.all_pairs_answer_after(t0, 30)
        base_rss = {n.index: (c.agents[n.index].pid, rss(c.agents[n.index].pid))
                    for n in c.nodes}
        print(f"\nchaos seed {SEED}, {count} faults (replay: make chaos SEED={SEED} "
              f"FAULTS={count})")
        try:
            for k, step in enumerate(plan(rng, count), 1):
                targets = rng.sample(c.nodes, len(step))
                wins = [Window(f.name, time.monotonic(), lossy={n.index} if f.lossy else set())
                        for f, n in zip(step, targets, strict=True)]
                runs = [f.run(ch, n) for f, n in zip(step, targets, strict=True)]
                hold = max(next(r) for r in runs)
                time.sleep(hold)  # the fault holds this long: what is tested is its duration
                # etcd heals first: an agent restart in the same step may need it
                for _, r in sorted(zip(step, runs, strict=True), key=lambda fr: not fr[0].etcd):
                    for _ in r:
                        pass
                healed = time.monotonic()
                for w in wins:
                    w.end = healed
                ch.windows += wins
                ch.agent_alive_check()
                back = ch.all_pairs_answer_after(healed, HEAL_DEADLINE)
                print(f"  {k:2d}. " + " + ".join(f.label(n) for f, n in
                                                zip(step, targets, strict=True))
                      + f": held {healed - wins[0].start:.1f} s, every pair back "
                      f"{back:.2f} s after")
            # the end state: exactly the other nodes' entries, in every kernel
            leases = expected(c)
            assert len(leases) == len(c.nodes), leases
            for n in c.nodes:
                own = str(SubnetEnv.read(c.subnet_env(n)).subnet)
                want = want_view(leases, own)
                wait_for(lambda n=n, want=want: kernel_view(n) == want, 30,
                         f"{n.name}'s kernel holding exactly the other nodes")
                assert state(c, n)["overlays"]["ipv4"]["drift"] == {}
            ch.agent_alive_check()
        except BaseException:
            print(f"chaos seed {SEED} failed; the agents' logs:")
            for n in c.nodes:
                print(f"--- {n.name}\n{c.log(n)[-2500:]}")
            raise
        finally:
            results = ch.stop_pingers()
        # losses: each must fall in a lossy fault's window on one of that fault's nodes
        unexcused = []
        sent = lost = 0
        for (a, b), res in results.items():
            sent += res["sent"]
            for t in res["lost"]:
                lost += 1
                if not any(w.start <= t <= w.end + HEAL_DEADLINE and w.lossy & {a, b}
                           for w in ch.windows):
                    during = [w.name for w in ch.windows
                              if w.start <= t <= w.end + HEAL_DEADLINE]
                    unexcused.append((f"node{a} -> node{b}", round(t - t0, 2), during))
        print(f"  pings: {sent} sent, {lost} lost on the pairs of faults that touch the data "
              f"path, {len(unexcused)} elsewhere")
        assert not unexcused, f"packets lost where none may be (seed {SEED}): {unexcused[:20]}"
        grown = {f"node{i}": (rss(pid) - before) >> 20 for i, (pid, before) in base_rss.items()
                 if c.agents.get(i) is not None and c.agents[i].pid == pid}
        print(f"  RSS growth of agents never restarted (MiB): {grown}")
        assert all(g << 20 <= RSS_GROWTH_MAX for g in grown.values()), grown
