"""The lab's Kubernetes API simulator (vxnet/lab/kubeapi.py): its patch and selector logic in
process, and its HTTP behaviour against a server process on 127.0.0.1 (one shared by the tests
that cannot disturb each other, one of their own for those that restart or compact it)."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import uuid
from typing import Any

import pytest

from tests.waiting import SOON, wait_for
from vxnet.lab.kubeapi import (
    ApiError,
    CidrPool,
    KubeApiServer,
    field_selector,
    json_patch,
    label_selector,
    merge_patch,
)

NODES = "/api/v1/nodes"
MERGE, STRATEGIC, JSONPATCH = ("application/merge-patch+json",
                               "application/strategic-merge-patch+json",
                               "application/json-patch+json")


# --- in process ---------------------------------------------------------------------------------

def test_merge_patch_is_rfc7386():
    doc = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    assert merge_patch(doc, {"a": "z", "c": {"f": None}, "l": [3]}) == \
        {"a": "z", "c": {"d": "e"}, "l": [3]}
    assert merge_patch(doc, {"new": {"x": 1}})["new"] == {"x": 1}
    assert doc["c"] == {"d": "e", "f": "g"}  # the input is not changed


def test_strategic_merge_merges_node_conditions_by_type():
    node = {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "MemoryPressure", "status": "False"}]},
            "spec": {"taints": [{"key": "a"}]}}
    out = merge_patch(node, {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletDown"},
        {"type": "NetworkUnavailable", "status": "False"},
        {"type": "MemoryPressure", "$patch": "delete"}]},
        "$setElementOrder/conditions": [], "spec": {"taints": [{"key": "b"}]}}, strategic=True)
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "False", "reason": "KubeletDown"},
        {"type": "NetworkUnavailable", "status": "False"}]
    assert out["spec"]["taints"] == [{"key": "b"}]  # other lists are replaced
    assert "$setElementOrder/conditions" not in out
    # a merge patch replaces the list
    assert merge_patch(node, {"status": {"conditions": [{"type": "X"}]}})["status"] == \
        {"conditions": [{"type": "X"}]}


def test_json_patch_is_rfc6902():
    doc = {"metadata": {"labels": {"a": "1", "x/y": "2"}}, "list": [1, 2]}
    out = json_patch(doc, [
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/b", "value": "3"},
        {"op": "remove", "path": "/metadata/labels/x~1y"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "add", "path": "/list/0", "value": 0},
        {"op": "copy", "from": "/list/0", "path": "/zero"},
        {"op": "move", "from": "/zero", "path": "/moved"},
    ], "n")
    assert out == {"metadata": {"labels": {"a": "9", "b": "3"}}, "list": [0, 1, 2, 3],
                   "moved": 0}
    assert doc["list"] == [1, 2]
    for ops in ([{"op": "test", "path": "/list/0", "value": 5}],
                [{"op": "remove", "path": "/nope"}],
                [{"op": "replace", "path": "/metadata/nope", "value": 1}],
                [{"op": "add", "path": "/list/7", "value": 1}],
                [{"op": "frobnicate", "path": "/list"}]):
        with pytest.raises(ApiError) as e:
            json_patch(doc, ops, "n")
        assert e.value.code == 422


def test_selectors():
    def node(name: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": labels}}

    a, b, c = node("a", zone="x", gpu="1"), node("b", zone="y"), node("c")

    def pick(sel: str, kind=label_selector) -> list[str]:
        return [n["metadata"]["name"] for n in (a, b, c) if kind(sel)(n)]

    assert pick("") == ["a", "b", "c"]
    assert pick("zone=x") == pick("zone==x") == ["a"]
    assert pick("zone!=x") == ["b", "c"]  # != also selects nodes without the label
    assert pick("gpu") == ["a"] and pick("!gpu") == ["b", "c"]
    assert pick("zone in (x, y),!gpu") == ["b"]
    assert pick("zone notin (x)") == ["b", "c"]
    assert pick("metadata.name=b", field_selector) == ["b"]
    assert pick("metadata.name!=b", field_selector) == ["a", "c"]
    for bad, kind in (("zone=(", label_selector), ("spec.unschedulable=true", field_selector)):
        with pytest.raises(ApiError) as e:
            kind(bad)
        assert e.value.code == 400


def test_cidr_pool_hands_out_in_turn_like_kcm():
    pool = CidrPool("10.244.0.0/22", 24)
    got = [pool.allocate() for _ in range(4)]
    assert got == [f"10.244.{i}.0/24" for i in range(4)] and pool.allocate() is None
    pool.used.discard(pool.index("10.244.1.0/24"))
    assert pool.allocate() == "10.244.1.0/24"
    assert pool.index("10.245.0.0/24") is None and pool.index("10.244.0.0/25") is None
    v6 = CidrPool("fd00:10:244::/48", 64)
    assert v6.allocate() == "fd00:10:244::/64" and v6.allocate() == "fd00:10:244:1::/64"


# --- over HTTP ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = KubeApiServer(workdir=tmp_path_factory.mktemp("kubeapi"), bookmark_interval=0.5,
                        cluster_cidr_v6="fd00:10:244::/48")
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def own_api(tmp_path):
    srv = KubeApiServer(workdir=tmp_path / "kubeapi", cluster_cidr="10.244.0.0/23",
                        compaction_window=4)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def unique() -> str:
    return f"n-{uuid.uuid4().hex[:8]}"


def create(api: KubeApiServer, name: str, **fields: Any) -> dict[str, Any]:
    status, body = api.request("POST", NODES, {"apiVersion": "v1", "kind": "Node",
                                               "metadata": {"name": name}, **fields})
    assert status == 201, body
    return body


def get(api: KubeApiServer, name: str) -> dict[str, Any]:
    status, body = api.request("GET", f"{NODES}/{name}")
    assert status == 200, body
    return body


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class Watch:
    """A watch stream, read one event (a JSON line) at a time."""

    def __init__(self, api: KubeApiServer, query: str, token: str | None = None,
                 path: str = NODES) -> None:
        ctx = ssl.create_default_context(cafile=str(api.ca))
        self.conn = http.client.HTTPSConnection(api.host, api.port, context=ctx, timeout=SOON)
        self.conn.request("GET", f"{path}?watch=true&{query}", headers={
            "Authorization": f"Bearer {token or api.admin_token}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()

    def next(self) -> dict[str, Any] | None:
        line = self.resp.readline()
        return json.loads(line) if line else None

    def until(self, pred) -> dict[str, Any]:
        """The first event `pred` accepts (bookmarks and others on the way are skipped)."""
        while (ev := self.next()) is not None:
            if pred(ev):
                return ev
        raise AssertionError("the watch ended")

    def close(self) -> None:
        self.conn.close()


def named(name: str, kind: str | None = None):
    return lambda ev: ev["object"].get("metadata", {}).get("name") == name \
        and (kind is None or ev["type"] == kind)


def test_discovery(api):
    status, version = api.request("GET", "/version", token="")  # no token: public, like /healthz
    assert status == 200 and version["major"] == "1" and version["minor"] == "32"
    assert api.request("GET", "/healthz", token="")[0] == 200
    assert api.request("GET", "/api")[1]["versions"] == ["v1"]
    resources = {r["name"]: r for r in api.request("GET", "/api/v1")[1]["resources"]}
    assert resources["nodes"]["shortNames"] == ["no"] and not resources["nodes"]["namespaced"]
    assert "watch" in resources["nodes"]["verbs"] and "nodes/status" in resources
    assert api.request("GET", "/apis")[1] == {"kind": "APIGroupList", "apiVersion": "v1",
                                              "groups": []}
    assert api.request("GET", "/openapi/v3")[0] == 404


def raw(api: KubeApiServer, method: str, path: str, headers: dict[str, str],
        body: bytes | None = None) -> tuple[int, str, str]:
    ctx = ssl.create_default_context(cafile=str(api.ca))
    conn = http.client.HTTPSConnection(api.host, api.port, context=ctx, timeout=SOON)
    try:
        conn.request(method, path, body=body, headers={
            "Authorization": f"Bearer {api.admin_token}", **headers})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def test_content_negotiation(api):
    # kubectl asks for aggregated discovery first; plain JSON back makes it fall back
    aggregated = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                  "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
                  "application/json")
    status, ctype, body = raw(api, "GET", "/apis", {"Accept": aggregated})
    assert status == 200 and ctype == "application/json" and json.loads(body)["groups"] == []
    only_aggregated = aggregated.rsplit(",", 1)[0]
    assert raw(api, "GET", "/apis", {"Accept": only_aggregated})[0] == 406
    assert raw(api, "GET", NODES, {"Accept": "application/vnd.kubernetes.protobuf"})[0] == 406
    name = unique()
    create(api, name, status={"conditions": [{"type": "Ready", "status": "True"}],
                              "nodeInfo": {"kubeletVersion": "v1.32.1"}},
           metadata={"name": name, "labels": {"node-role.kubernetes.io/worker": ""}})
    status, _, body = raw(api, "GET", f"{NODES}?fieldSelector=metadata.name%3D{name}", {
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    tbl = json.loads(body)
    assert tbl["kind"] == "Table" and [c["name"] for c in tbl["columnDefinitions"]][:5] == \
        ["Name", "Status", "Roles", "Age", "Version"]
    cells = tbl["rows"][0]["cells"]
    assert cells[:3] == [name, "Ready", "worker"] and cells[4] == "v1.32.1"
    assert cells[3].endswith("s")  # its age, in seconds
    assert tbl["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert tbl["metadata"]["resourceVersion"]


def test_create_get_list_delete(api):
    name = unique()
    node = create(api, name, metadata={"name": name, "labels": {"test": name}})
    meta = node["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and rv(node) > 0
    assert node["kind"] == "Node" and node["apiVersion"] == "v1"
    status, dup = api.request("POST", NODES, {"metadata": {"name": name}})
    assert status == 409 and dup["reason"] == "AlreadyExists" and dup["kind"] == "Status"
    assert api.request("POST", NODES, {"metadata": {"name": "Not_Valid"}})[0] == 422
    assert get(api, name)["metadata"]["uid"] == meta["uid"]
    status, lst = api.request("GET", f"{NODES}?labelSelector=test%3D{name}")
    assert lst["kind"] == "NodeList" and [n["metadata"]["name"] for n in lst["items"]] == [name]
    assert int(lst["metadata"]["resourceVersion"]) >= rv(node)
    status, gone = api.request("DELETE", f"{NODES}/{name}")
    assert status == 200 and gone["metadata"]["name"] == name and rv(gone) > rv(node)
    status, missing = api.request("GET", f"{NODES}/{name}")
    assert status == 404 and missing["reason"] == "NotFound" and missing["code"] == 404
    assert missing["details"] == {"name": name, "kind": "nodes"}
    assert api.request("DELETE", f"{NODES}/{name}")[0] == 404


def test_list_pages_with_limit_and_continue(api):
    stem = unique()
    for i in range(5):
        create(api, f"{stem}-{i}", metadata={"name": f"{stem}-{i}", "labels": {"page": stem}})
    names, token, pages = [], "", 0
    while True:
        status, lst = api.request("GET", f"{NODES}?labelSelector=page%3D{stem}&limit=2"
                                  + (f"&continue={token}" if token else ""))
        assert status == 200
        pages += 1
        names += [n["metadata"]["name"] for n in lst["items"]]
        token = lst["metadata"].get("continue", "")
        if not token:
            break
    assert names == [f"{stem}-{i}" for i in range(5)] and pages == 3


def test_update_has_optimistic_concurrency_and_leaves_status_to_its_subresource(api):
    name = unique()
    create(api, name, status={"conditions": [{"type": "Ready", "status": "True"}]})
    node = get(api, name)
    stale = json.loads(json.dumps(node))
    node["metadata"]["labels"] = {"a": "1"}
    node["status"] = {"conditions": []}  # ignored on the main resource
    status, updated = api.request("PUT", f"{NODES}/{name}", node)
    assert status == 200 and updated["metadata"]["labels"] == {"a": "1"}
    assert updated["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    stale["metadata"]["labels"] = {"b": "2"}
    status, err = api.request("PUT", f"{NODES}/{name}", stale)
    assert status == 409 and err["reason"] == "Conflict"
    del stale["metadata"]["resourceVersion"]  # an unconditional update, as Nodes allow
    assert api.request("PUT", f"{NODES}/{name}", stale)[0] == 200
    current = get(api, name)
    current["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    current["metadata"]["labels"] = {"taken": "along, as a real server's Node status does"}
    current["spec"] = {"unschedulable": True}  # ignored by the status subresource
    status, after = api.request("PUT", f"{NODES}/{name}/status", current)
    assert status == 200 and after["status"]["conditions"][0]["status"] == "False"
    assert after["metadata"]["labels"] == current["metadata"]["labels"]
    assert "unschedulable" not in after.get("spec", {})
    assert api.request("PUT", f"{NODES}/other", current)[0] in (400, 404)


def test_patches(api):
    name = unique()
    create(api, name, status={"conditions": [{"type": "Ready", "status": "True"},
                                             {"type": "DiskPressure", "status": "False"}]})
    path = f"{NODES}/{name}"
    ann = "flannel.alpha.coreos.com/public-ip"
    status, node = api.request("PATCH", path, {"metadata": {"annotations": {ann: "1.2.3.4"}},
                                               "status": {"conditions": []}},
                               content_type=MERGE)
    assert status == 200 and node["metadata"]["annotations"] == {ann: "1.2.3.4"}
    assert len(node["status"]["conditions"]) == 2  # .status is not the main resource's
    status, node = api.request("PATCH", path, {"metadata": {"labels": {"s": "1"}}},
                               content_type=STRATEGIC)
    assert status == 200 and node["metadata"]["labels"] == {"s": "1"}
    status, node = api.request("PATCH", path, [
        {"op": "add", "path": "/metadata/labels/j", "value": "2"},
        {"op": "remove", "path": "/metadata/annotations/" + ann.replace("/", "~1")}],
        content_type=JSONPATCH)
    assert status == 200 and node["metadata"]["labels"] == {"s": "1", "j": "2"}
    assert node["metadata"]["annotations"] == {}
    status, err = api.request("PATCH", path, [{"op": "test", "path": "/metadata/labels/j",
                                               "value": "wrong"}], content_type=JSONPATCH)
    assert status == 422 and err["kind"] == "Status"
    status, node = api.request("PATCH", f"{path}/status", {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}, "metadata": {"labels": {"no": "no"}}},
        content_type=STRATEGIC)
    assert status == 200 and node["status"]["conditions"] == [
        {"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}]
    assert node["metadata"]["labels"]["no"] == "no"  # metadata rides along (flanneld's way)
    before = rv(node)
    status, same = api.request("PATCH", path, {"metadata": {"labels": {"s": "1"}}},
                               content_type=MERGE)
    assert status == 200 and rv(same) == before  # a no-op writes nothing
    status, err = api.request("PATCH", path, {"metadata": {"resourceVersion": "1"}},
                              content_type=MERGE)
    assert status == 409
    status, err = api.request("PATCH", path, "x: 1", content_type="application/apply-patch+yaml")
    assert status == 415 and err["reason"] == "UnsupportedMediaType"
    assert api.request("PATCH", f"{NODES}/{unique()}", {}, content_type=MERGE)[0] == 404


def test_pod_cidrs_are_allocated_and_immutable(api):
    name = unique()
    node = create(api, name)
    assert "podCIDR" not in node["spec"]  # the allocation is a change of its own
    cidrs = wait_for(lambda: get(api, name)["spec"].get("podCIDRs"), SOON, "podCIDRs")
    assert cidrs[0].startswith("10.244.") and cidrs[0].endswith("/24")
    assert cidrs[1].startswith("fd00:10:244:") and cidrs[1].endswith("/64")
    assert get(api, name)["spec"]["podCIDR"] == cidrs[0]
    status, err = api.request("PATCH", f"{NODES}/{name}", {"spec": {"podCIDR": "10.9.0.0/24",
                                                                    "podCIDRs": ["10.9.0.0/24"]}},
                              content_type=MERGE)
    assert status == 422 and err["reason"] == "Invalid"
    others = [get(api, n)["spec"]["podCIDR"] for n in (create(api, unique())["metadata"]["name"],
                                                       create(api, unique())["metadata"]["name"])]
    assert len({cidrs[0], *others}) == 3


def test_watch_from_a_resource_version_sees_what_came_after(api):
    name = unique()
    node = create(api, name)
    w = Watch(api, f"resourceVersion={rv(node)}&fieldSelector=metadata.name%3D{name}")
    try:
        assert w.until(named(name))["type"] == "MODIFIED"  # its podCIDRs
        api.request("PATCH", f"{NODES}/{name}", {"metadata": {"labels": {"x": "1"}}},
                    content_type=MERGE)
        ev = w.until(named(name))
        assert ev["type"] == "MODIFIED" and ev["object"]["metadata"]["labels"] == {"x": "1"}
        assert ev["object"]["kind"] == "Node"
        api.request("DELETE", f"{NODES}/{name}")
        assert w.until(named(name))["type"] == "DELETED"
    finally:
        w.close()


def test_watch_without_a_resource_version_starts_with_the_current_nodes(api):
    name = unique()
    create(api, name)
    w = Watch(api, "resourceVersion=0")
    try:
        assert w.until(named(name))["type"] == "ADDED"
    finally:
        w.close()


def test_the_watch_path_watches_one_node_by_name(api):
    mine, other = unique(), unique()
    create(api, mine)
    create(api, other)
    w = Watch(api, "resourceVersion=0", path=f"/api/v1/watch/nodes/{mine}")
    try:
        assert w.until(named(mine))["type"] == "ADDED"
        for name in (other, mine):
            api.request("PATCH", f"{NODES}/{name}", {"metadata": {"labels": {"x": "1"}}},
                        content_type=MERGE)
        ev = w.next()  # the other node's change is not on this stream
        assert ev["object"]["metadata"]["name"] == mine and ev["type"] == "MODIFIED"
    finally:
        w.close()


def test_a_label_selected_watch_sees_nodes_come_and_go(api):
    name, label = unique(), unique()
    create(api, name)
    w = Watch(api, f"labelSelector=sel%3D{label}&resourceVersion={rv(get(api, name))}")
    try:
        for value, kind in ((label, "ADDED"), ("other", "DELETED"), (label, "ADDED")):
            api.request("PATCH", f"{NODES}/{name}", {"metadata": {"labels": {"sel": value}}},
                        content_type=MERGE)
            assert w.until(named(name))["type"] == kind
    finally:
        w.close()


def test_watch_bookmarks_and_timeout(api):
    current = rv(create(api, unique()))
    w = Watch(api, f"resourceVersion={current}&allowWatchBookmarks=true&timeoutSeconds=2")
    try:
        start = time.monotonic()
        bookmark = w.until(lambda ev: ev["type"] == "BOOKMARK")
        assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= current
        while w.next() is not None:  # the stream ends by itself at timeoutSeconds
            pass
        assert 1.5 < time.monotonic() - start < SOON
    finally:
        w.close()
    w = Watch(api, f"resourceVersion={current}&timeoutSeconds=1")  # no bookmarks unless asked
    try:
        while (ev := w.next()) is not None:
            assert ev["type"] != "BOOKMARK"
    finally:
        w.close()


def test_authentication(api):
    for status, err in (raw_no_auth(api, NODES), api.request("GET", NODES, token="wrong")):
        assert status == 401 and err["reason"] == "Unauthorized" and err["kind"] == "Status"
    assert raw_no_auth(api, "/api")[0] == 401
    assert api.request("GET", "/version", token="wrong")[0] == 401  # a bad token is never let by


def raw_no_auth(api: KubeApiServer, path: str) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(api.ca))
    conn = http.client.HTTPSConnection(api.host, api.port, context=ctx, timeout=SOON)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_node_token_reads_all_and_writes_only_its_own_node(api):
    mine, other = unique(), unique()
    create(api, mine)
    create(api, other)
    token = api.node_token(mine)
    assert api.request("GET", NODES, token=token)[0] == 200
    assert api.request("GET", f"{NODES}/{other}", token=token)[0] == 200
    patch = {"metadata": {"annotations": {"flannel.alpha.coreos.com/backend-type": "vxlan"}}}
    assert api.request("PATCH", f"{NODES}/{mine}", patch, token=token,
                       content_type=MERGE)[0] == 200
    assert api.request("PATCH", f"{NODES}/{mine}/status",
                       {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                       token=token, content_type=STRATEGIC)[0] == 200
    status, err = api.request("PATCH", f"{NODES}/{other}", patch, token=token,
                              content_type=MERGE)
    assert status == 403 and err["reason"] == "Forbidden"
    assert f'User "system:node:{mine}" cannot patch resource "nodes"' in err["message"]
    assert api.request("PUT", f"{NODES}/{other}/status", get(api, other), token=token)[0] == 403
    assert api.request("DELETE", f"{NODES}/{mine}", token=token)[0] == 403
    assert api.request("POST", NODES, {"metadata": {"name": unique()}}, token=token)[0] == 403
    assert api.request("POST", "/lab/compact", token=token)[0] == 403
    w = Watch(api, "resourceVersion=0", token=token)  # watching is reading
    w.close()
    stranger = api.add_token("someone")
    assert api.request("GET", NODES, token=stranger)[0] == 403
    assert api.request("GET", "/api/v1", token=stranger)[0] == 200  # discovery: any user


def test_tokens_are_reread_when_the_file_changes(api):
    token = api.add_token("system:node:rotating")
    assert api.request("GET", NODES, token=token)[0] == 200
    new = api.rotate_token("system:node:rotating")
    assert api.request("GET", NODES, token=token)[0] == 401
    assert api.request("GET", NODES, token=new)[0] == 200
    api.remove_token(new)
    assert api.request("GET", NODES, token=new)[0] == 401
    assert api.request("GET", NODES)[0] == 200  # the admin's is untouched


def test_cidrs_are_freed_with_their_node_and_wait_for_one(own_api):
    api = own_api  # 10.244.0.0/23: two node CIDRs
    a, b, c = (create(api, n)["metadata"]["name"] for n in ("a", "b", "c"))
    assert get(api, a)["spec"]["podCIDRs"] == ["10.244.0.0/24"]
    assert get(api, b)["spec"]["podCIDRs"] == ["10.244.1.0/24"]
    assert "podCIDR" not in get(api, c)["spec"]  # none left
    w = Watch(api, f"resourceVersion={rv(get(api, c))}")
    try:
        api.request("DELETE", f"{NODES}/{a}")
        assert w.until(named(a))["type"] == "DELETED"
        ev = w.until(named(c))
        assert ev["type"] == "MODIFIED" and ev["object"]["spec"]["podCIDR"] == "10.244.0.0/24"
    finally:
        w.close()


def test_resuming_from_before_the_kept_history_gets_410(own_api):
    api = own_api  # a compaction window of 4 events
    first = rv(create(api, "a"))
    for i in range(4):
        api.request("PATCH", f"{NODES}/a", {"metadata": {"labels": {"i": str(i)}}},
                    content_type=MERGE)
    w = Watch(api, f"resourceVersion={first}")
    try:
        ev = w.next()
        assert ev["type"] == "ERROR" and ev["object"]["code"] == 410
        assert ev["object"]["reason"] == "Expired" and w.next() is None
    finally:
        w.close()
    now = rv(get(api, "a"))
    w = Watch(api, f"resourceVersion={now - 2}")  # still kept
    try:
        assert w.next()["type"] == "MODIFIED"
        assert api.compact() == now
        api.request("PATCH", f"{NODES}/a", {"metadata": {"labels": {"i": "x"}}},
                    content_type=MERGE)
        w.until(lambda ev: ev["object"]["metadata"].get("labels") == {"i": "x"})  # open: goes on
    finally:
        w.close()
    w = Watch(api, f"resourceVersion={now - 1}")
    try:
        assert w.next()["object"]["code"] == 410  # compacted for new watches
    finally:
        w.close()


def test_restart_keeps_nodes_and_resource_versions_but_not_watch_history(own_api):
    api = own_api
    a = create(api, "a", metadata={"name": "a", "labels": {"keep": "me"}})
    after = get(api, "a")
    api.restart()
    kept = get(api, "a")
    assert kept == after and kept["metadata"]["uid"] == a["metadata"]["uid"]
    b = create(api, "b")
    assert rv(b) == rv(after) + 1
    assert wait_for(lambda: get(api, "b")["spec"].get("podCIDR"), SOON) == "10.244.1.0/24"
    w = Watch(api, f"resourceVersion={rv(a)}")
    try:
        assert w.next()["object"]["code"] == 410
    finally:
        w.close()
    w = Watch(api, f"resourceVersion={rv(after)}")  # where the restart found it: resumable
    try:
        assert w.until(named("b"))["type"] == "ADDED"
    finally:
        w.close()


def test_freeze_and_thaw(own_api):
    api = own_api
    api.freeze()
    try:
        with pytest.raises((TimeoutError, OSError)):
            api.request("GET", "/healthz", timeout=0.5)
    finally:
        api.thaw()
    assert api.request("GET", "/healthz")[0] == 200
