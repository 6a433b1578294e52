"""The real kubectl (v1.32, client only) against the lab's Kubernetes API simulator: if kubectl
accepts it, the simulator speaks enough of the API for a kube store's tests to mean something."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import SOON
from vxnet.lab.kubeapi import KubeApiServer
from vxnet.lab.netns import Netns

KUBECTL = "/usr/bin/kubectl"
pytestmark = pytest.mark.skipif(not os.path.exists(KUBECTL),
                                reason=f"needs the real kubectl at {KUBECTL}")


@pytest.fixture
def api(tmp_path):
    srv = KubeApiServer(workdir=tmp_path / "kubeapi")
    srv.start()
    try:
        for name in ("n1", "n2"):
            status, body = srv.request("POST", "/api/v1/nodes", {
                "metadata": {"name": name, "labels": {"node-role.kubernetes.io/worker": ""}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "nodeInfo": {"kubeletVersion": "v1.32.0"}}})
            assert status == 201, body
        yield srv
    finally:
        srv.close()


class Kubectl:
    """kubectl with its own kubeconfig and discovery cache in a temp dir."""

    def __init__(self, api: KubeApiServer, home: Path, token: str | None = None,
                 netns: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = api.kubeconfig(home / "kubeconfig", token)
        self.cache = home / "cache"
        self.netns = netns

    def argv(self, *args: str) -> list[str]:
        wrap = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*wrap, KUBECTL, "--kubeconfig", str(self.kubeconfig), "--cache-dir",
                str(self.cache), "--request-timeout", "20s", *args]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {res.returncode}\n{res.stderr}")
        return res


@pytest.fixture
def kubectl(api, tmp_path):
    return Kubectl(api, tmp_path / "admin")


def node(api: KubeApiServer, name: str) -> dict[str, Any]:
    status, body = api.request("GET", f"/api/v1/nodes/{name}")
    assert status == 200, body
    return body


def test_get_nodes_as_a_table(kubectl):
    out = kubectl("get", "nodes").stdout.splitlines()
    assert out[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    rows = [line.split() for line in out[1:]]
    assert [r[0] for r in rows] == ["n1", "n2"]
    assert all(r[1:3] == ["Ready", "worker"] and r[4] == "v1.32.0" for r in rows)
    wide = kubectl("get", "nodes", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[5:7] == ["INTERNAL-IP", "EXTERNAL-IP"]
    assert kubectl("get", "no", "n2", "--no-headers").stdout.split()[0] == "n2"


def test_get_nodes_as_json_and_yaml(api, kubectl):
    listed = json.loads(kubectl("get", "nodes", "-o", "json").stdout)
    assert [n["metadata"]["name"] for n in listed["items"]] == ["n1", "n2"]
    assert all(n["kind"] == "Node" and n["spec"]["podCIDR"].startswith("10.244.")
               for n in listed["items"])
    text = kubectl("get", "node", "n1", "-o", "yaml").stdout
    assert "kind: Node" in text and "name: n1" in text
    assert f"podCIDR: {node(api, 'n1')['spec']['podCIDR']}" in text


def test_annotate_and_label(api, kubectl):
    key = "flannel.alpha.coreos.com/public-ip"
    assert "annotated" in kubectl("annotate", "node", "n1", f"{key}=198.51.100.1").stdout
    refused = kubectl("annotate", "node", "n1", f"{key}=198.51.100.2", check=False)
    assert refused.returncode != 0 and "--overwrite is false" in refused.stderr
    kubectl("annotate", "node", "n1", "--overwrite", f"{key}=198.51.100.2")
    assert node(api, "n1")["metadata"]["annotations"] == {key: "198.51.100.2"}
    kubectl("label", "node", "n1", "zone=a")
    assert node(api, "n1")["metadata"]["labels"]["zone"] == "a"
    assert kubectl("get", "nodes", "-l", "zone=a", "-o", "name").stdout.split() == ["node/n1"]
    kubectl("label", "node", "n1", "zone-")
    assert "zone" not in node(api, "n1")["metadata"]["labels"]


def test_patch_each_type(api, kubectl):
    kubectl("patch", "node", "n1", "--type", "merge", "-p",
            '{"metadata":{"annotations":{"m":"1"}}}')
    kubectl("patch", "node", "n1", "--type", "strategic", "-p",
            '{"metadata":{"annotations":{"s":"1"}}}')
    kubectl("patch", "node", "n1", "--type", "json", "-p",
            '[{"op":"add","path":"/metadata/annotations/j","value":"1"},'
            '{"op":"remove","path":"/metadata/annotations/m"}]')
    assert node(api, "n1")["metadata"]["annotations"] == {"s": "1", "j": "1"}
    kubectl("patch", "node", "n1", "--subresource", "status", "--type", "strategic", "-p",
            '{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False"}]}}')
    assert [c["type"] for c in node(api, "n1")["status"]["conditions"]] == \
        ["Ready", "NetworkUnavailable"]
    bad = kubectl("patch", "node", "n1", "--type", "json", "-p",
                  '[{"op":"test","path":"/metadata/name","value":"n2"}]', check=False)
    assert bad.returncode != 0


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return q


def next_line(q: queue.Queue[str], what: str) -> list[str]:
    try:
        return q.get(timeout=SOON).split()
    except queue.Empty:
        raise AssertionError(f"kubectl printed no {what}") from None


def test_get_nodes_watch(api, kubectl):
    proc = subprocess.Popen(kubectl.argv("get", "nodes", "--watch"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        q = lines_of(proc)
        assert next_line(q, "header")[0] == "NAME"
        assert [next_line(q, "row")[0] for _ in range(2)] == ["n1", "n2"]
        api.request("PATCH", "/api/v1/nodes/n2/status", {"status": {"conditions": [
            {"type": "Ready", "status": "False"}]}},
            content_type="application/strategic-merge-patch+json")
        assert next_line(q, "change")[:2] == ["n2", "NotReady"]
        api.request("POST", "/api/v1/nodes", {"metadata": {"name": "n3"}})
        assert next_line(q, "new node")[:2] == ["n3", "Unknown"]
        assert proc.poll() is None  # still watching
    finally:
        proc.terminate()  # ours, by its handle
        proc.wait(timeout=SOON)


def test_delete_node(api, kubectl):
    assert 'node "n2" deleted' in kubectl("delete", "node", "n2").stdout
    assert api.request("GET", "/api/v1/nodes/n2")[0] == 404
    assert kubectl("get", "nodes", "-o", "name").stdout.split() == ["node/n1"]


def test_a_wrong_token_is_unauthorized(api, kubectl, tmp_path):
    kubectl("get", "nodes")  # fills the discovery cache the next kubectl shares
    wrong = Kubectl(api, tmp_path / "wrong", token="not-a-token")
    wrong.cache = kubectl.cache
    res = wrong("get", "nodes", check=False)
    assert res.returncode != 0 and "Unauthorized" in res.stderr, res.stderr
    # Without a discovery cache kubectl's first request is aggregated discovery, whose error
    # it reports as "the server has asked for the client to provide credentials" (a real
    # server's 401 reads the same); a plain request shows the Status' reason.
    cold = Kubectl(api, tmp_path / "cold", token="not-a-token")
    res = cold("get", "nodes", check=False)
    assert res.returncode != 0 and "You must be logged in to the server" in res.stderr
    res = cold("get", "--raw", "/api/v1/nodes", check=False)
    assert res.returncode != 0 and "Unauthorized" in res.stderr, res.stderr


def test_a_node_token_may_not_patch_another_node(api, tmp_path):
    as_n1 = Kubectl(api, tmp_path / "n1", token=api.node_token("n1"))
    assert [r.split()[0] for r in as_n1("get", "nodes").stdout.splitlines()[1:]] == ["n1", "n2"]
    as_n1("annotate", "node", "n1", "flannel.alpha.coreos.com/backend-type=vxlan")
    res = as_n1("annotate", "node", "n2", "flannel.alpha.coreos.com/backend-type=vxlan",
                check=False)
    assert res.returncode != 0 and "Forbidden" in res.stderr, res.stderr
    assert 'User "system:node:n1" cannot patch resource "nodes"' in res.stderr
    res = as_n1("delete", "node", "n1", check=False)
    assert res.returncode != 0 and "Forbidden" in res.stderr


def test_a_rotated_token_stops_working(api, tmp_path):
    as_n1 = Kubectl(api, tmp_path / "n1")
    token_file = tmp_path / "n1" / "token"
    as_n1.kubeconfig = api.kubeconfig(tmp_path / "n1" / "kubeconfig", api.node_token("n1"),
                                      token_file=token_file)
    as_n1("get", "nodes")
    new = api.rotate_token("system:node:n1")
    assert "Unauthorized" in as_n1("get", "nodes", check=False).stderr
    token_file.write_text(new)  # the kubeconfig names the file: the new token is used
    as_n1("get", "nodes")


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_in_a_network_namespace(tmp_path):
    ns = Netns.create("kapi")
    try:
        with KubeApiServer(netns=ns.name, workdir=tmp_path / "kubeapi") as srv:
            assert srv.request("POST", "/api/v1/nodes", {"metadata": {"name": "n1"}})[0] == 201
            out = Kubectl(srv, tmp_path / "admin", netns=ns.name)("get", "nodes").stdout
            assert out.splitlines()[1].split()[0] == "n1"
            srv.freeze()
            try:
                with pytest.raises(OSError):  # a TimeoutError: the process does not answer
                    srv.request("GET", "/healthz", timeout=0.5)
            finally:
                srv.thaw()
            srv.restart()
            assert srv.request("GET", "/api/v1/nodes/n1")[0] == 200
    finally:
        ns.delete()
