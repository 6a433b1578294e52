"""The Kubernetes store's logic over a fake API: flannel's annotation format both ways, Nodes
turned into lease events, our annotations defended, a compacted watch re-listed."""

import asyncio
import ipaddress as ipa
import json

import pytest

from tests.waiting import SOON, until
from vxnet.errors import RevisionCompacted, StoreUnavailable, VxnetError
from vxnet.store.config import parse_config
from vxnet.store.kube import Gone, NotFound, ServerBusy
from vxnet.store.kubestore import Annotations, KubeStore, pod_cidrs
from vxnet.store.lease import LeaseAttrs, SubnetKey
from vxnet.store.store import EventKind, NodeInfo

P = "flannel.alpha.coreos.com/"
CFG = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}))


def flannel_node(name: str, cidr: str | None, ip: str, mac: str, rv: int = 1) -> dict:
    """A Node as flanneld leaves it."""
    ann = {P + "backend-type": "vxlan", P + "kube-subnet-manager": "true",
           P + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}), P + "public-ip": ip}
    return {"metadata": {"name": name, "resourceVersion": str(rv), "annotations": ann},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}}


class FakeApi:
    """Nodes in memory; get/patch/watch as KubeClient's."""

    server = "https://fake"
    reconnects = 0

    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self.rv = 10
        self.events: asyncio.Queue = asyncio.Queue()
        self.patches: list[tuple[str, dict]] = []
        self.lists: list[dict] = []  # the params of every list of Nodes
        self.continue_fails: list[Exception] = []  # what the next continued lists raise

    def put(self, node: dict, kind: str = "MODIFIED") -> None:
        self.rv += 1
        node["metadata"]["resourceVersion"] = str(self.rv)
        if kind == "DELETED":
            self.nodes.pop(node["metadata"]["name"], None)
        else:
            self.nodes[node["metadata"]["name"]] = node
        self.events.put_nowait({"type": kind, "object": node})

    async def get(self, path, params=None):
        if path == "/api/v1/nodes":  # limit/continue as the API server pages: an offset here
            self.lists.append(dict(params or {}))
            items, start = list(self.nodes.values()), int((params or {}).get("continue", 0))
            if start and self.continue_fails:
                raise self.continue_fails.pop(0)
            end = start + int((params or {}).get("limit", 0) or len(items))
            meta = {"resourceVersion": str(self.rv)} | (
                {"continue": str(end)} if end < len(items) else {})
            return {"metadata": meta, "items": items[start:end]}
        name = path.rsplit("/", 1)[1]
        if name not in self.nodes:
            raise NotFound(404, "NotFound", name)
        return self.nodes[name]

    async def patch(self, path, body, content_type=None):
        self.patches.append((path, body))
        name = path.split("/")[4]
        node = self.nodes[name]
        node["metadata"].setdefault("annotations", {}).update(
            body.get("metadata", {}).get("annotations", {}))
        if "status" in body:
            node["status"] = body["status"]
        self.rv += 1
        node["metadata"]["resourceVersion"] = str(self.rv)
        return node

    async def watch(self, path, params, silence, on_open=lambda: None):
        on_open()
        while True:
            ev = await self.events.get()
            if isinstance(ev, Exception):
                raise ev
            yield ev

    async def close(self):
        pass


def attrs_for(key: SubnetKey) -> LeaseAttrs:
    return LeaseAttrs(ipa.ip_address("198.51.100.11"), "0e:18:0a:f4:01:00")


def test_our_annotations_are_flannel_s_and_read_back_as_theirs():
    ann = Annotations("flannel.alpha.coreos.com")
    mine = ann.of(attrs_for(SubnetKey(ipa.ip_network("10.244.1.0/24"))))
    assert mine == {P + "backend-type": "vxlan", P + "kube-subnet-manager": "true",
                    P + "backend-data": '{"VNI":1,"VtepMAC":"0e:18:0a:f4:01:00"}',
                    P + "public-ip": "198.51.100.11"}
    assert ann.attrs("k", mine) == attrs_for(None)
    theirs = flannel_node("n2", "10.244.2.0/24", "198.51.100.12", "0E:AA:00:00:00:02")
    got = ann.attrs("k", theirs["metadata"]["annotations"])
    assert (str(got.public_ip), got.vtep_mac) == ("198.51.100.12", "0e:aa:00:00:00:02")


@pytest.mark.parametrize("bad, why", [
    ({P + "backend-data": "{"}, "is not JSON"),
    ({P + "backend-type": "host-gw"}, "is not vxlan"),
    ({P + "public-ip": "not-an-ip"}, "PublicIP"),
    ({P + "backend-data": '{"VNI":1,"VtepMAC":"zz"}'}, "VtepMAC"),
])
def test_bad_annotations_are_rejected_with_a_reason(bad, why):
    ann = Annotations("flannel.alpha.coreos.com")
    node = flannel_node("n2", "10.244.2.0/24", "198.51.100.12", "0e:aa:00:00:00:02")
    node["metadata"]["annotations"].update(bad)
    with pytest.raises(VxnetError, match=why):
        ann.attrs("k", node["metadata"]["annotations"])


def test_pod_cidrs_by_family():
    dual = parse_config(json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                    "IPv6Network": "fd00:10:244::/48"}))
    node = {"spec": {"podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"]}}
    assert str(pod_cidrs(node, dual)) == "10.244.3.0-24&fd00:10:244:3::-64"
    assert str(pod_cidrs(node, CFG)) == "10.244.3.0-24"
    assert pod_cidrs({"spec": {"podCIDR": "10.244.3.0/24"}}, dual) is None  # v6 not yet
    with pytest.raises(ValueError, match="not a subnet"):
        pod_cidrs({"spec": {"podCIDR": "10.244.3.1/24"}}, CFG)


async def store_with(api: FakeApi) -> KubeStore:
    s = KubeStore(api, "n1", net_conf_path="/nonexistent")
    await s.acquire(CFG, NodeInfo("n1", ipa.ip_address("198.51.100.11")), attrs_for, None)
    return s


async def test_acquire_waits_for_the_node_and_its_podcidr_then_publishes():
    api = FakeApi()
    s = KubeStore(api, "n1", net_conf_path="/nonexistent")
    with pytest.raises(StoreUnavailable, match="not registered"):
        await s.acquire(CFG, NodeInfo("n1", None), attrs_for, None)
    api.nodes["n1"] = {"metadata": {"name": "n1", "resourceVersion": "1"}, "spec": {}}
    with pytest.raises(StoreUnavailable, match="no podCIDR"):
        await s.acquire(CFG, NodeInfo("n1", None), attrs_for, None)
    api.nodes["n1"]["spec"] = {"podCIDR": "10.244.1.0/24"}
    lease = await s.acquire(CFG, NodeInfo("n1", None), attrs_for, None)
    assert str(lease.key) == "10.244.1.0-24"
    assert api.nodes["n1"]["metadata"]["annotations"][P + "kube-subnet-manager"] == "true"
    assert [p for p, _ in api.patches] == ["/api/v1/nodes/n1/status"]  # the annotations
    assert [list(page.leases) async for page in s.listing()] == [[str(lease.key)]]
    # once the first sync is done: NetworkUnavailable=False, by the keeper
    keeper = asyncio.create_task(s.keep(CFG, lambda ev: asyncio.sleep(0)))
    try:
        await s.ready()
        await until(lambda: len(api.patches) == 2, SOON)
        assert api.patches[1][1]["status"]["conditions"][0] == {**api.patches[1][1]["status"][
            "conditions"][0], "type": "NetworkUnavailable", "status": "False"}
    finally:
        keeper.cancel()


async def test_a_podcidr_outside_the_network_is_a_clear_error():
    api = FakeApi()
    api.nodes["n1"] = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.99.1.0/24"}}
    with pytest.raises(VxnetError, match=r"outside 10\.244\.0\.0/16"):
        await store_with(api)


async def test_nodes_become_lease_events():
    api = FakeApi()
    api.nodes["n1"] = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}
    s = await store_with(api)
    [_ async for _ in s.listing()]
    seen: list = []

    async def consume():
        async for batch in s.watch():
            seen.extend(batch)

    task = asyncio.create_task(consume())
    try:
        api.put(flannel_node("n2", "10.244.2.0/24", "198.51.100.12", "0e:aa:00:00:00:02"),
                "ADDED")
        api.put({"metadata": {"name": "n3"}, "spec": {}}, "ADDED")  # not a flannel node yet
        api.put(flannel_node("n2", "10.244.2.0/24", "198.51.100.22", "0e:aa:00:00:00:02"))
        bad = flannel_node("n4", "10.244.4.0/24", "198.51.100.14", "0e:aa:00:00:00:04")
        bad["metadata"]["annotations"][P + "backend-data"] = "{"
        api.put(bad, "ADDED")
        api.put(flannel_node("n2", "10.244.2.0/24", "198.51.100.22", "0e:aa:00:00:00:02"),
                "DELETED")
        await until(lambda: len(seen) >= 4, SOON)
        assert [(e.kind, e.key) for e in seen] == [
            (EventKind.ADDED, "10.244.2.0-24"), (EventKind.CHANGED, "10.244.2.0-24"),
            (EventKind.INVALID, "10.244.4.0-24"), (EventKind.REMOVED, "10.244.2.0-24")]
        assert str(seen[1].lease.attrs.public_ip) == "198.51.100.22"
        assert s.status().watching
        # the history is gone: a re-list says what changed meanwhile
        del api.nodes["n4"]
        api.nodes["n5"] = flannel_node("n5", "10.244.5.0/24", "198.51.100.15",
                                       "0e:aa:00:00:00:05")
        api.events.put_nowait(Gone(410, "Expired", "too old"))
        await until(lambda: len(seen) >= 6, SOON)
        assert {(e.kind, e.key) for e in seen[4:]} == {
            (EventKind.REMOVED, "10.244.4.0-24"), (EventKind.ADDED, "10.244.5.0-24")}
        assert s.relists == 1 and set(s._leases) == {"10.244.1.0-24", "10.244.5.0-24"}
    finally:
        task.cancel()


@pytest.mark.parametrize("fails, raised", [
    (Gone(410, "Expired", "The provided continue parameter is too old"), RevisionCompacted),
    (ServerBusy(429, "TooManyRequests", "too many requests"), StoreUnavailable),
    (ServerBusy(503, "ServiceUnavailable", "<html>"), StoreUnavailable)])
async def test_nodes_are_listed_a_page_at_a_time_and_again_when_a_page_fails(
        monkeypatch, fails, raised):
    """A page of Nodes is a page of the first sync, as the API server answers; a continue token
    that expired is RevisionCompacted, a server shedding load unavailable for now: either
    way nothing is kept of the pages read, and the caller's next listing starts over."""
    monkeypatch.setattr("vxnet.store.kubestore.PAGE", 2)
    api = FakeApi()
    api.nodes["n1"] = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}
    for i in range(2, 7):
        api.nodes[f"n{i}"] = flannel_node(f"n{i}", f"10.244.{i}.0/24", f"198.51.100.{i}",
                                          f"0e:aa:00:00:00:0{i}")
    api.continue_fails.append(fails)  # on the second page
    s = await store_with(api)
    got = []
    with pytest.raises(raised, match=str(fails.status)):
        async for page in s.listing():
            got.append(sorted(page.leases))
    assert got == [["10.244.1.0-24", "10.244.2.0-24"]] and s._rv == ""  # nothing kept
    pages = [sorted(page.leases) async for page in s.listing()]
    assert pages == [[f"10.244.{i}.0-24", f"10.244.{i + 1}.0-24"] for i in (1, 3, 5)]
    assert api.lists == [{"limit": "2"}, {"limit": "2", "continue": "2"}, {"limit": "2"},
                         {"limit": "2", "continue": "2"}, {"limit": "2", "continue": "4"}]
    assert s._rv == str(api.rv) and len(s._leases) == 6  # what the watch continues from
    with pytest.raises(RuntimeError, match="without a new acquire"):
        [_ async for _ in s.listing()]


async def test_our_annotations_overwritten_are_put_back_and_counted():
    api = FakeApi()
    api.nodes["n1"] = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}
    s = await store_with(api)
    api.nodes["n1"]["metadata"]["annotations"][P + "public-ip"] = "198.51.100.99"
    lost = []

    async def on_lost(ev):
        lost.append(ev)

    keeper = asyncio.create_task(s.keep(CFG, on_lost))
    try:
        s.check_soon()
        await until(lambda: s.takeovers == 1, SOON)
        assert api.nodes["n1"]["metadata"]["annotations"][P + "public-ip"] == "198.51.100.11"
        assert lost == []
    finally:
        keeper.cancel()


async def test_public_ip_overwrite_is_honoured():
    api = FakeApi()
    api.nodes["n1"] = {"metadata": {"name": "n1", "annotations": {
        P + "public-ip-overwrite": "203.0.113.7"}}, "spec": {"podCIDR": "10.244.1.0/24"}}
    lease = (await store_with(api)).lease
    assert str(lease.attrs.public_ip) == "203.0.113.7"
    assert api.nodes["n1"]["metadata"]["annotations"][P + "public-ip"] == "203.0.113.7"


class RecordingApi(FakeApi):
    """Every call as RBAC sees it: (resource, verb)."""

    def __init__(self):
        super().__init__()
        self.calls: set[tuple[str, str]] = set()

    def _resource(self, path: str) -> str:
        parts = path.strip("/").split("/")  # api v1 (namespaces ns) resource [name [sub]]
        if parts[2] == "namespaces":
            return parts[4]
        return parts[2] + (f"/{parts[4]}" if len(parts) > 4 else "")

    async def get(self, path, params=None):
        single = (path.count("/") > 3 and "/namespaces/" not in path) or "/pods/" in path
        self.calls.add((self._resource(path), "get" if single else "list"))
        if "/pods/" in path:
            return {"spec": {"nodeName": "n1"}}
        return await super().get(path, params)

    async def patch(self, path, body, content_type=None):
        self.calls.add((self._resource(path), "patch"))
        return await super().patch(path, body, content_type)

    async def watch(self, path, params, silence, on_open=lambda: None):
        self.calls.add((self._resource(path), "watch"))
        async for ev in super().watch(path, params, silence, on_open):
            yield ev


async def test_the_store_calls_exactly_what_the_manifest_grants(monkeypatch):
    import yaml

    from vxnet.store.kubestore import RBAC, RBAC_WITHOUT_NODE_NAME, node_name

    api = RecordingApi()
    api.nodes["n1"] = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}
    monkeypatch.delenv("NODE_NAME", raising=False)
    monkeypatch.setenv("POD_NAME", "vxnet-abc")
    monkeypatch.setenv("POD_NAMESPACE", "kube-vxnet")
    assert await node_name(api, "fallback") == "n1"
    s = await store_with(api)
    [_ async for _ in s.listing()]  # as the first sync reads it
    await s.move(NodeInfo("n1", ipa.ip_address("198.51.100.21")), lambda k: LeaseAttrs(
        ipa.ip_address("198.51.100.21"), "0e:18:0a:f4:01:00"))
    watching = asyncio.create_task(anext(s.watch()))
    api.put(flannel_node("n2", "10.244.2.0/24", "198.51.100.12", "0e:aa:00:00:00:02"), "ADDED")
    await asyncio.wait_for(watching, SOON)
    made = {(r, v) for r, v in api.calls}
    granted = {(r, v) for r, verbs in RBAC.items() for v in verbs}
    assert made == granted | {(r, v) for r, verbs in RBAC_WITHOUT_NODE_NAME.items()
                              for v in verbs}
    with open("deploy/kubernetes/vxnet-kube.yaml") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {(r, v) for rule in role["rules"] for r in rule["resources"]
            for v in rule["verbs"]} == granted
    # and the ConfigMap's net-conf.json is a config vxnet accepts
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert parse_config(cm["data"]["net-conf.json"]).ipv4 is not None
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--kube-subnet-mgr" in args
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
    env = {e["name"] for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "NODE_NAME" in env  # so the agent needs no pods get
