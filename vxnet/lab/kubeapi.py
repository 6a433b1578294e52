"""A small Kubernetes API server for the lab: Nodes only, enough for vxnet's kube mode and for
the real kubectl. Lab tooling (the agent never imports it), standard library only.

What it serves: discovery (/version, /api, /api/v1, /apis), /healthz; cluster-scoped Nodes and
nodes/status with create, get, list (label and metadata.name field selectors, limit/continue),
watch (resume from a resourceVersion, BOOKMARK events, timeoutSeconds, ERROR 410 for a
resourceVersion older than the kept history), merge / strategic-merge / JSON patch, update with
optimistic concurrency, delete; server-side Tables for kubectl. One global resourceVersion; state
and the counter persist in --state-dir (watch history does not). TLS with its own CA (openssl),
bearer tokens from a kube-apiserver style token file (re-read when it changes), an admin and a
per-node authorization, and kube-controller-manager's --allocate-node-cidrs (spec.podCIDR(s)).

    python -m vxnet.lab.kubeapi --listen 127.0.0.1:6443 --state-dir DIR \\
        [--cluster-cidr 10.244.0.0/16 --node-cidr-mask 24] \\
        [--cluster-cidr-v6 fd00:10:244::/48 --node-cidr-mask-v6 64] [--compaction-window N]

then `kubectl --kubeconfig DIR/admin.kubeconfig get nodes`. `KubeApiServer` runs it from tests.

Not like a real API server: Nodes are the only resource (no Pods, namespaces, Leases, Events,
API groups); no OpenAPI (kubectl create/apply need --validate=false), aggregated discovery,
server-side apply, protobuf, YAML or HTTP/2; no managedFields, generation, finalizers (delete is
immediate), admission, dry run; validation covers the name, string labels/annotations and
podCIDR immutability only; a strategic merge merges status.conditions/addresses by type and
ignores other directives. Static bearer tokens only (no client certificates, no TokenRequest),
fixed admin/node rules instead of RBAC (a node may not create or delete its own Node), and no
anonymous access beyond /healthz, /livez, /readyz, /version (401, where a real one says 403).
Lists always show the current state (a continue token pages on through it, not through a
snapshot); field selectors know metadata.name only. Watch history is a window of events
(--compaction-window, or POST /lab/compact) and is gone after a restart, so every resume from
before a restart is 410 (a real server rebuilds its cache from etcd); a future resourceVersion
is not refused; bookmarks come at a fixed interval; a client that left is noticed at the next
write. CIDRs are allocated synchronously right after the ADDED event, not by a lagging
controller; there is no node lifecycle controller (no NotReady or taints on silence).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import calendar
import copy
import csv
import http.client
import io
import ipaddress
import json
import os
import re
import secrets
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from vxnet.ip import contains
from vxnet.lab.etcd import free_port
from vxnet.lab.process import ServerProcess
from vxnet.nsenter import in_netns

Obj = dict[str, Any]
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
MAX_WATCH_SECONDS = 1800  # a watch without timeoutSeconds ends after this, as kube-apiserver's
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")  # system:public-info-viewer's
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+vxnet-lab",
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
           "platform": "linux/amd64"}
NODE_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class ApiError(Exception):
    """A failure answered as a metav1.Status."""

    def __init__(self, code: int, reason: str, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.name = code, reason, message, name

    def status(self) -> Obj:
        out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": self.message, "reason": self.reason, "code": self.code}
        if self.name is not None:
            out["details"] = {"name": self.name, "kind": "nodes"}
        return out


def not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'nodes "{name}" not found', name)


def conflict(name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": the '
                    "object has been modified; please apply your changes to the latest version "
                    "and try again", name)


def invalid(name: str, why: str) -> ApiError:
    return ApiError(422, "Invalid", f'Node "{name}" is invalid: {why}', name)


def expired(rv: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {rv} ({oldest})")


# --- patches -----------------------------------------------------------------------------------

# Lists that a strategic merge patch merges by a key instead of replacing (Node's patchMergeKey).
MERGE_KEYS = {("status", "conditions"): "type", ("status", "addresses"): "type"}


def merge_patch(target: Any, patch: Any, strategic: bool = False, path: tuple[str, ...] = ()
                ) -> Any:
    """RFC 7386 JSON merge patch; with `strategic`, Kubernetes' strategic merge as far as Nodes
    need it: lists in MERGE_KEYS are merged by key (an item {"$patch": "delete"} removes), and
    other directives ($setElementOrder/..., $retainKeys) are ignored."""
    if not isinstance(patch, dict):
        return patch
    if strategic and patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        where = (*path, key)
        if strategic and key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        elif strategic and where in MERGE_KEYS and isinstance(value, list):
            out[key] = _merge_list(out.get(key) or [], value, MERGE_KEYS[where], where)
        else:
            out[key] = merge_patch(out.get(key), value, strategic, where)
    return out


def _merge_list(items: list[Any], patch: list[Any], key: str, path: tuple[str, ...]
                ) -> list[Any]:
    out = list(items)
    for item in patch:
        at = next((i for i, old in enumerate(out)
                   if isinstance(old, dict) and isinstance(item, dict)
                   and old.get(key) == item.get(key)), None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append(merge_patch(None, item, True, path))
        else:
            out[at] = merge_patch(out[at], item, True, path)
    return out


def json_patch(doc: Obj, ops: Any, name: str) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    def fail(why: str) -> ApiError:
        return ApiError(422, "Invalid", f"the server rejected our request due to an error in "
                        f"our request: {why}", name)

    def pointer(text: Any) -> list[str]:
        if not isinstance(text, str) or (text and not text.startswith("/")):
            raise fail(f"invalid JSON pointer {text!r}")
        return [t.replace("~1", "/").replace("~0", "~") for t in text.split("/")[1:]]

    def parent(root: Any, tokens: list[str]) -> tuple[Any, str]:
        node = root
        for tok in tokens[:-1]:
            try:
                node = node[int(tok)] if isinstance(node, list) else node[tok]
            except (KeyError, IndexError, ValueError, TypeError):
                raise fail(f"path /{'/'.join(tokens)} does not exist") from None
        return node, tokens[-1]

    def get(root: Any, tokens: list[str]) -> Any:
        if not tokens:
            return root
        node, last = parent(root, tokens)
        try:
            return node[int(last)] if isinstance(node, list) else node[last]
        except (KeyError, IndexError, ValueError, TypeError):
            raise fail(f"path /{'/'.join(tokens)} does not exist") from None

    def add(root: Any, tokens: list[str], value: Any) -> Any:
        if not tokens:
            return value
        node, last = parent(root, tokens)
        if isinstance(node, list):
            at = len(node) if last == "-" else int(last) if last.isdigit() else -1
            if not 0 <= at <= len(node):
                raise fail(f"index {last} out of range")
            node.insert(at, value)
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise fail(f"cannot add to /{'/'.join(tokens)}")
        return root

    def remove(root: Any, tokens: list[str]) -> Any:
        get(root, tokens)  # it must exist
        node, last = parent(root, tokens)
        del node[int(last) if isinstance(node, list) else last]
        return root

    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch is a list of operations", name)
    out: Any = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise fail(f"invalid operation {op!r}")
        kind, path = op.get("op"), pointer(op.get("path"))
        if kind == "test":
            if get(out, path) != op.get("value"):
                raise fail(f"testing value /{'/'.join(path)} failed")
        elif kind == "remove":
            out = remove(out, path)
        elif kind == "add":
            out = add(out, path, copy.deepcopy(op.get("value")))
        elif kind == "replace":
            out = add(remove(out, path), path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = pointer(op.get("from"))
            value = copy.deepcopy(get(out, source))
            if kind == "move":
                out = remove(out, source)
            out = add(out, path, value)
        else:
            raise fail(f"unknown operation {kind!r}")
    return out


# --- selectors ---------------------------------------------------------------------------------

Selector = Callable[[Obj], bool]
Labels = dict[str, str]


def label_selector(text: str) -> Selector:
    """Equality and set-based label selectors: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a)
    (as in Kubernetes, != and notin also select objects without the label)."""
    reqs: list[tuple[str, str, frozenset[str]]] = []  # (in|notin|exists|absent, key, values)
    for req in (r.strip() for r in re.split(r",(?![^()]*\))", text) if r.strip()):
        m = re.fullmatch(r"(!?)([\w./-]+)(?:\s*(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?",
                         req)
        if m is None or (m.group(1) and m.group(3, 5) != (None, None)):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {req!r}")
        neg, key, op, value, setop, values = m.groups()
        if op is not None:
            reqs.append(("notin" if op == "!=" else "in", key, frozenset([value])))
        elif setop is not None:
            reqs.append((setop, key, frozenset(v.strip() for v in values.split(","))))
        else:
            reqs.append(("absent" if neg else "exists", key, frozenset()))

    def selected(obj: Obj) -> bool:
        labels: Labels = obj["metadata"].get("labels") or {}
        return all({"in": labels.get(k) in vs, "notin": labels.get(k) not in vs,
                    "exists": k in labels, "absent": k not in labels}[op] for op, k, vs in reqs)
    return selected


def field_selector(text: str) -> Selector:
    """metadata.name=X, ==X, !=X: the one field a Node watch is selected by."""
    reqs: list[tuple[str, bool]] = []  # (name, equal)
    for req in (r.strip() for r in text.split(",") if r.strip()):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", req)
        if m is None or m.group(1) != "metadata.name":
            raise ApiError(400, "BadRequest", f'field label not supported: "{req}"')
        reqs.append((m.group(3), m.group(2) != "!="))
    return lambda o: all((o["metadata"]["name"] == v) == eq for v, eq in reqs)


# --- tables (what `kubectl get` prints) --------------------------------------------------------

COLUMNS = [("Name", "name", 0), ("Status", "", 0), ("Roles", "", 0), ("Age", "", 0),
           ("Version", "", 0), ("Internal-IP", "", 1), ("External-IP", "", 1),
           ("OS-Image", "", 1), ("Kernel-Version", "", 1), ("Container-Runtime", "", 1)]


def human_age(seconds: float) -> str:
    """kubectl's duration.HumanDuration, to the minute where it shows minutes."""
    s = int(seconds)
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{max(s, 0)}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    return f"{d}d{h % 24}h" if d < 8 and h % 24 else f"{d}d"


def table_row(node: Obj, include: str) -> Obj:
    meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or []
                  if c.get("type") == "Ready"), None)
    state = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = meta.get("labels") or {}
    roles = sorted({k.split("/", 1)[1] for k in labels
                    if k.startswith("node-role.kubernetes.io/") and k.count("/") == 1}
                   | ({labels["kubernetes.io/role"]} if "kubernetes.io/role" in labels else set()))
    created = calendar.timegm(time.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    age = human_age(time.time() - created)
    addrs = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    row: Obj = {"cells": [meta["name"], state, ",".join(roles) or "<none>", age,
                          info.get("kubeletVersion", ""), addrs.get("InternalIP", "<none>"),
                          addrs.get("ExternalIP", "<none>"), info.get("osImage") or "<unknown>",
                          info.get("kernelVersion") or "<unknown>",
                          info.get("containerRuntimeVersion") or "<unknown>"]}
    if include == "Object":
        row["object"] = node
    elif include != "None":  # PartialObjectMetadata, the default
        row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                         "metadata": meta}
    return row


def table(nodes: list[Obj], include: str, list_meta: Obj | None = None) -> Obj:
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta or {},
            "columnDefinitions": [{"name": n, "type": "string", "format": f, "description": n,
                                   "priority": p} for n, f, p in COLUMNS],
            "rows": [table_row(n, include) for n in nodes]}


# --- node CIDRs (kube-controller-manager --allocate-node-cidrs) --------------------------------

class CidrPool:
    """One cluster CIDR cut into node CIDRs; like kcm's cidrset, the search for a free one goes
    on from the last one given, so a freed CIDR is not handed out again at once."""

    def __init__(self, cluster: str, mask: int) -> None:
        self.net: IPNet = ipaddress.ip_network(cluster)
        self.mask, self.used, self.next = mask, set[int](), 0
        self.size = 1 << (mask - self.net.prefixlen)

    def index(self, cidr: str) -> int | None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
        if net.prefixlen != self.mask or not contains(self.net, net):  # same family, inside
            return None
        return (int(net.network_address) - int(self.net.network_address)) >> (
            self.net.max_prefixlen - self.mask)

    def allocate(self) -> str | None:
        for step in range(self.size):
            i = (self.next + step) % self.size
            if i not in self.used:
                self.used.add(i)
                self.next = (i + 1) % self.size
                addr = int(self.net.network_address) + (i << (self.net.max_prefixlen - self.mask))
                return str(ipaddress.ip_network((addr, self.mask)))
        return None


def node_cidrs(node: Obj) -> list[str]:
    spec = node.get("spec") or {}
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


# --- the store ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    rv: int
    type: str
    obj: Obj  # as committed; never changed afterwards (every change makes a new dict)
    prev: Obj | None


class Store:
    """Nodes, the global resourceVersion and the watch history, under one lock. Persisted as a
    snapshot (state.json) plus a journal of changes since (journal.jsonl), folded at start."""

    def __init__(self, state_dir: Path, pools: list[CidrPool], window: int) -> None:
        self.cond = threading.Condition()
        self.nodes: dict[str, Obj] = {}
        self.rv = 0
        self.history: list[Event] = []
        self.window, self.pools = window, pools
        self.snapshot, self.journal_path = state_dir / "state.json", state_dir / "journal.jsonl"
        if self.snapshot.exists():
            state = json.loads(self.snapshot.read_text())
            self.rv = int(state["resourceVersion"])
            self.nodes = {n["metadata"]["name"]: n for n in state["nodes"]}
        if self.journal_path.exists():
            for line in self.journal_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    break  # a line cut short by a kill: nothing after it was written
                name = entry["object"]["metadata"]["name"]
                if entry["type"] == DELETED:
                    self.nodes.pop(name, None)
                else:
                    self.nodes[name] = entry["object"]
                self.rv = max(self.rv, entry["rv"])
        _write_atomic(self.snapshot, json.dumps(
            {"resourceVersion": self.rv, "nodes": list(self.nodes.values())}))
        self.journal = open(self.journal_path, "w")  # noqa: SIM115  # open while serving
        self.kept_from = self.rv  # every event after this resourceVersion is in history
        self.floor = self.rv  # a watch may start at this resourceVersion or later
        for node in self.nodes.values():
            self._occupy(node, True)
        with self.cond:
            self._allocate_pending()

    def _occupy(self, node: Obj, used: bool) -> None:
        for cidr in node_cidrs(node):
            for pool in self.pools:
                if (i := pool.index(cidr)) is not None:
                    (pool.used.add if used else pool.used.discard)(i)

    def _commit(self, kind: str, obj: Obj, prev: Obj | None) -> Obj:
        """Under the lock: the next resourceVersion, the change, its event, its journal line."""
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        name = obj["metadata"]["name"]
        if prev is not None:
            self._occupy(prev, False)
        if kind == DELETED:
            del self.nodes[name]
        else:
            self.nodes[name] = obj
            self._occupy(obj, True)
        self.history.append(Event(self.rv, kind, obj, prev))
        if len(self.history) > self.window:
            drop = len(self.history) - self.window
            self.kept_from = self.history[drop - 1].rv
            self.floor = max(self.floor, self.kept_from)
            del self.history[:drop]
        self.journal.write(json.dumps({"rv": self.rv, "type": kind, "object": obj}) + "\n")
        self.journal.flush()
        self.cond.notify_all()
        return obj

    def _allocate_pending(self) -> None:
        """Under the lock: a CIDR from every pool for each Node that has none (oldest first); a
        Node that cannot get one from each waits for a Node to be deleted."""
        for node in list(self.nodes.values()):
            if node_cidrs(node) or not self.pools:
                continue
            got = [c for c in (p.allocate() for p in self.pools) if c is not None]
            if len(got) < len(self.pools):
                self._occupy({"spec": {"podCIDRs": got}}, False)
                return
            spec = {**(node.get("spec") or {}), "podCIDR": got[0], "podCIDRs": got}
            self._commit(MODIFIED, {**node, "spec": spec}, node)

    def get(self, name: str) -> Obj:
        with self.cond:
            if name not in self.nodes:
                raise not_found(name)
            return self.nodes[name]

    def create(self, body: Any) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata") or {}, dict):
            raise ApiError(400, "BadRequest", "the object is not a Node")
        if (body.get("kind"), body.get("apiVersion")) not in ((None, None), ("Node", "v1")):
            raise ApiError(400, "BadRequest", "this server serves v1 Nodes only")
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        with self.cond:
            if name in self.nodes:
                raise ApiError(409, "AlreadyExists", f'nodes "{name}" already exists', name)
            node = {"kind": "Node", "apiVersion": "v1", "spec": {}, "status": {},
                    **{k: v for k, v in body.items() if k not in ("kind", "apiVersion")},
                    "metadata": {**meta, "uid": str(uuid.uuid4()), "creationTimestamp":
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
            _validate(node, None)
            node = self._commit(ADDED, node, None)
            self._allocate_pending()
            return node

    def replace(self, name: str, change: Any, subresource: str | None) -> Obj:
        """Update (change: the new object) or patch (change: old object -> new object). The main
        resource keeps .status; the status subresource keeps .spec."""
        with self.cond:
            if name not in self.nodes:
                raise not_found(name)
            old = self.nodes[name]
            new = change(copy.deepcopy(old)) if callable(change) else change
            if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
                raise ApiError(400, "BadRequest", "the object is not a Node", name)
            meta = new.get("metadata") or {}
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')})"
                               f" does not match the name on the URL ({name})", name)
            if meta.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
                raise conflict(name)
            if meta.get("uid") not in (None, "", old["metadata"]["uid"]):
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: "
                               f"{meta.get('uid')}, UID in object meta: "
                               f"{old['metadata']['uid']}", name)
            # what each endpoint may change, as the Node strategies of a real server: the
            # main resource keeps .status; the status subresource keeps .spec but takes the
            # metadata (labels, annotations) along -- flanneld publishes its annotations so
            node = {k: v for k, v in new.items() if k not in ("status", "spec")}
            node["metadata"] = {**meta, "name": name, "uid": old["metadata"]["uid"],
                                "creationTimestamp": old["metadata"]["creationTimestamp"],
                                "resourceVersion": old["metadata"]["resourceVersion"]}
            node.update(kind="Node", apiVersion="v1")
            kept, changed = ("spec", "status") if subresource == "status" else ("status", "spec")
            if kept in old:
                node[kept] = old[kept]
            if changed in new:
                node[changed] = new[changed]
            _validate(node, old)
            if node == old:
                return old  # a no-op writes nothing, as a real server's does
            return self._commit(MODIFIED, node, old)

    def delete(self, name: str, options: Obj) -> Obj:
        pre = options.get("preconditions") or {}
        with self.cond:
            if name not in self.nodes:
                raise not_found(name)
            old = self.nodes[name]
            if pre.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]) \
                    or pre.get("uid") not in (None, old["metadata"]["uid"]):
                raise conflict(name)
            gone = self._commit(DELETED, old, old)
            self._allocate_pending()
            return gone

    def compact(self) -> int:
        """Forget history up to now for new watches (open watches keep going)."""
        with self.cond:
            self.floor = self.rv
            return self.rv

    def changes(self, pos: int, timeout: float) -> tuple[list[Event], int]:
        """The events after `pos` (waiting up to `timeout` for one) and the resourceVersion they
        bring the watcher to. ApiError 410 when events after `pos` were dropped."""
        with self.cond:
            if self.rv <= pos:
                self.cond.wait(timeout)
            if pos < self.kept_from:
                raise expired(pos, self.kept_from + 1)
            at = bisect.bisect_right(self.history, pos, key=lambda e: e.rv)
            return self.history[at:], max(pos, self.rv)


def _validate(node: Obj, old: Obj | None) -> None:
    meta = node["metadata"]
    name = meta.get("name")
    if not isinstance(name, str) or not re.fullmatch(
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) \
            or len(name) > 253:
        raise invalid(str(name), f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 "
                      "subdomain must consist of lower case alphanumeric characters, '-' or '.'")
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ApiError(400, "BadRequest", f"metadata.{field}: values must be strings", name)
    for cidr in node_cidrs(node):
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            raise invalid(name, f"spec.podCIDRs: Invalid value: {cidr!r}") from None
    if old is not None and node_cidrs(old) and node_cidrs(node) != node_cidrs(old):
        raise invalid(name, "spec.podCIDRs: Forbidden: node updates may not change podCIDR "
                      'except from "" to valid')


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- authentication and authorization ----------------------------------------------------------

@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]

    @property
    def admin(self) -> bool:
        return self.name == "admin" or "system:masters" in self.groups


def parse_tokens(text: str) -> list[list[str]]:
    """kube-apiserver's --token-auth-file: token,user,uid[,"group1,group2"] per line."""
    return [row for row in csv.reader(io.StringIO(text)) if len(row) >= 3]


def read_tokens(path: Path) -> list[list[str]]:
    return parse_tokens(path.read_text()) if path.exists() else []


def write_tokens(path: Path, rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    _write_atomic(path, out.getvalue())  # a new inode: the server sees the change at once


def token_row(user: str) -> list[str]:
    groups = ("system:masters" if user == "admin" else
              "system:nodes" if user.startswith("system:node:") else "")
    return [secrets.token_hex(16), user, user, groups]


class Tokens:
    """The token file, read on every request (a few hundred bytes) and parsed again when its
    content changed: a rotated or removed token stops working at once, whatever the file's
    timestamps' granularity."""

    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, threading.Lock()
        self.text: str | None = None
        self.users: dict[str, User] = {}

    def user(self, token: str) -> User | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = ""
        with self.lock:
            if text != self.text:
                self.text = text
                self.users = {r[0]: User(r[1], tuple(g for g in (r[3:4] or [""])[0].split(",")
                                                     if g)) for r in parse_tokens(text)}
            return self.users.get(token)


def authorize(user: User, verb: str, name: str | None, subresource: str | None) -> None:
    """An admin may do anything; system:node:<n> may read every Node and patch/update its own
    (and its status); nobody else may touch Nodes."""
    if user.admin:
        return
    node = user.name.removeprefix("system:node:") if user.name.startswith("system:node:") \
        else None
    if node is not None and (verb in ("get", "list", "watch")
                             or (verb in ("patch", "update") and name == node)):
        return
    what = "nodes" + (f"/{subresource}" if subresource else "")
    subject = f'nodes "{name}"' if name else "nodes"
    raise ApiError(403, "Forbidden", f'{subject} is forbidden: User "{user.name}" cannot {verb} '
                   f'resource "{what}" in API group "" at the cluster scope', name)


# --- HTTP --------------------------------------------------------------------------------------

NODE_PATH = re.compile(r"/api/v1/(watch/)?nodes(?:/([^/]+)(?:/(status))?)?")
PATCH_TYPES = {"application/merge-patch+json": "merge", "application/json-patch+json": "json",
               "application/strategic-merge-patch+json": "strategic"}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, store: Store, tokens: Tokens,
                 context: ssl.SSLContext, bookmark_interval: float) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)
        self.store, self.tokens, self.bookmark_interval = store, tokens, bookmark_interval

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: no reverse DNS lookup
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        print(f"connection from {client_address}: {sys.exc_info()[1]!r}", file=sys.stderr)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each watch event goes out at once
    server: Server
    body = b""

    def setup(self) -> None:
        self.request.settimeout(10)
        self.request.do_handshake()  # here, in this connection's thread, not in accept()
        self.request.settimeout(None)
        super().setup()

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        body = f" content-type={self.headers.get('Content-Type')!r}" if self.body else ""
        print(f"{self.command} {self.path} {code} accept={self.headers.get('Accept')!r}{body} "
              f"ua={self.headers.get('User-Agent')!r}", file=sys.stderr, flush=True)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        try:
            self._route()
        except ApiError as e:
            self._send(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self._send(500, ApiError(500, "InternalError", "internal error").status())

    def _send(self, code: int, obj: Obj | str, ctype: str = "application/json") -> None:
        data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> User | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        user = self.server.tokens.user(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def _accepts(self, tables: bool) -> str:
        """'json' or 'table' (a meta.k8s.io Table), the first the client accepts; else 406."""
        for part in (self.headers.get("Accept") or "*/*").split(","):
            mtype, *params = (p.strip() for p in part.split(";"))
            p = dict(x.split("=", 1) for x in params if "=" in x)
            if mtype not in ("application/json", "application/*", "*/*"):
                continue
            if "as" not in p:
                return "json"
            if tables and p["as"] == "Table" and p.get("g") == "meta.k8s.io" \
                    and p.get("v") in ("v1", "v1beta1"):
                return "table"
        raise ApiError(406, "NotAcceptable", "only the following media types are accepted: "
                       "application/json" + (", application/json;as=Table;v=v1;g=meta.k8s.io"
                                             if tables else ""))

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", {k: v[-1] for k, v in
                                                    parse_qs(url.query).items()}
        user = self._user()
        if path in PUBLIC_PATHS:
            if path == "/version":
                self._send(200, VERSION)
            else:
                self._send(200, "ok", "text/plain; charset=utf-8")
            return
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if m := NODE_PATH.fullmatch(path):
            self._nodes(user, query, bool(m.group(1)), m.group(2), m.group(3))
        elif path == "/lab/compact" and self.command == "POST":
            if not user.admin:
                raise ApiError(403, "Forbidden", f'forbidden: User "{user.name}" cannot post '
                               'path "/lab/compact"')
            self._send(200, {"resourceVersion": str(self.server.store.compact())})
        elif self.command != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{self.command} is not allowed on {path}")
        elif path == "/api":
            self._accepts(False)
            host = self.headers.get("Host", "")
            self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                             "serverAddress": host}]})
        elif path == "/api/v1":
            self._accepts(False)
            self._send(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
                 "verbs": NODE_VERBS, "shortNames": ["no"]},
                {"name": "nodes/status", "singularName": "", "namespaced": False, "kind": "Node",
                 "verbs": ["get", "patch", "update"]}]})
        elif path == "/apis":
            self._accepts(False)  # aggregated discovery is not offered: clients fall back
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _nodes(self, user: User, query: dict[str, str], watch_path: bool, name: str | None,
               sub: str | None) -> None:
        store, method = self.server.store, self.command
        watch = watch_path or query.get("watch") in ("1", "true")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, "watch" if watch else "get" if name else "list")
        allowed = {"create": not name, "get": not watch_path, "watch": not sub,
                   "list": True, "update": bool(name), "patch": bool(name),
                   "delete": bool(name) and not sub}[verb]
        if not allowed:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {self.path}")
        authorize(user, verb, name, sub)
        if verb in ("get", "list", "watch"):
            fmt = self._accepts(True)
            selectors = [label_selector(query.get("labelSelector", "")),
                         field_selector(query.get("fieldSelector", ""))]
            if name and watch:
                selectors.append(field_selector(f"metadata.name={name}"))
            if watch:
                self._watch(query, lambda o: all(s(o) for s in selectors), fmt == "table",
                            query.get("includeObject", ""))
            elif name:
                node = store.get(name)
                self._send(200, table([node], query.get("includeObject", ""))
                           if fmt == "table" else node)
            else:
                self._list(query, lambda o: all(s(o) for s in selectors), fmt == "table")
            return
        body = self._json() if method != "DELETE" else (self._json() if self.body else {})
        if verb == "create":
            self._send(201, store.create(body))
        elif verb == "update":
            self._send(200, store.replace(str(name), body, sub))
        elif verb == "patch":
            self._send(200, store.replace(str(name), self._patcher(str(name)), sub))
        else:
            self._send(200, store.delete(str(name), body))

    def _json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"invalid JSON in the request body: {e}") from None

    def _patcher(self, name: str) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        kind = PATCH_TYPES.get(ctype)
        if kind is None:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an "
                           "unknown format - accepted media types include: "
                           + ", ".join(PATCH_TYPES))
        patch = self._json()
        if kind == "json":
            return lambda old: json_patch(old, patch, name)
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object", name)
        return lambda old: merge_patch(old, patch, kind == "strategic")

    def _list(self, query: dict[str, str], selected: Selector, as_table: bool) -> None:
        store = self.server.store
        start, rv = "", None
        if token := query.get("continue"):
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                start, rv = str(state["start"]), int(state["rv"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "invalid continue token") from None
        with store.cond:
            if rv is not None and rv < store.floor:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to "
                               "display a consistent list result. You can start a new list "
                               "without the continue parameter.")
            rv = store.rv if rv is None else rv
            items = [store.nodes[n] for n in sorted(store.nodes) if n > start
                     and selected(store.nodes[n])]
        meta: Obj = {"resourceVersion": str(rv)}
        limit = int(query.get("limit") or 0)
        if 0 < limit < len(items):
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"rv": rv, "start": items[-1]["metadata"]["name"]}).encode()).decode()
        if as_table:
            self._send(200, table(items, query.get("includeObject", ""), meta))
        else:
            self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": [
                {k: v for k, v in n.items() if k not in ("kind", "apiVersion")} for n in items]})

    def _watch(self, query: dict[str, str], selected: Selector, as_table: bool,
               include: str) -> None:
        store = self.server.store
        try:
            since = int(query.get("resourceVersion") or 0) or None
            timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH_SECONDS),
                          MAX_WATCH_SECONDS)
        except ValueError:
            raise ApiError(400, "BadRequest", "resourceVersion and timeoutSeconds are numbers"
                           ) from None
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        with store.cond:  # no resourceVersion (or 0): the current Nodes first, as ADDED
            pos = store.rv if since is None else since
            current = [n for n in store.nodes.values() if selected(n)] if since is None else []
            too_old, floor = pos < store.floor, store.floor
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(kind: str, obj: Obj) -> None:
            if as_table and kind in (ADDED, MODIFIED, DELETED):
                obj = table([obj], include)
            data = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        deadline = time.monotonic() + timeout
        interval = self.server.bookmark_interval
        next_bookmark = time.monotonic() + interval
        if too_old:
            send("ERROR", expired(pos, floor + 1).status())
            deadline = 0
        for node in current:
            send(ADDED, node)
        while (now := time.monotonic()) < deadline:
            wake = min(deadline, next_bookmark) if bookmarks else deadline
            try:
                events, pos_after = store.changes(pos, max(wake - now, 0))
            except ApiError as e:
                send("ERROR", e.status())
                break
            for ev in events:
                now_in = ev.type != DELETED and selected(ev.obj)
                was_in = ev.prev is not None and selected(ev.prev)
                if now_in:
                    send(MODIFIED if was_in else ADDED, ev.obj)
                elif was_in:  # deleted, or no longer selected
                    send(DELETED, ev.obj)
            pos = pos_after
            if bookmarks and time.monotonic() >= next_bookmark:
                send("BOOKMARK", {"kind": "Node", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(pos)}})
                next_bookmark = time.monotonic() + interval
        self.wfile.write(b"0\r\n\r\n")


# --- TLS and kubeconfig ------------------------------------------------------------------------

def ensure_tls(state_dir: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA (made once) and a server certificate for `host`, 127.0.0.1, ::1 and localhost (made
    again when the host changes): (ca.crt, server.crt, server.key) in state_dir."""
    ca, ca_key = state_dir / "ca.crt", state_dir / "ca.key"
    cert, key, san_file = state_dir / "server.crt", state_dir / "server.key", state_dir / "san"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    if not (ca.exists() and ca_key.exists()):
        openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "3650",
                "-subj", "/CN=vxnet-lab-kubeapi-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ips = {"127.0.0.1", "::1"} | ({host} if host not in ("", "0.0.0.0", "::") else set())
    san = ",".join(["DNS:localhost", *(f"IP:{ip}" for ip in sorted(ips))])
    if not (cert.exists() and key.exists() and san_file.exists()) \
            or san_file.read_text() != san:
        csr, ext = state_dir / "server.csr", state_dir / "server.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
                       "keyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n")
        openssl("req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
                "-subj", "/CN=kube-apiserver")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-set_serial", str(secrets.randbits(63)), "-days", "3650", "-out", str(cert),
                "-extfile", str(ext))
        san_file.write_text(san)
        csr.unlink()
        ext.unlink()
    return ca, cert, key


def url_of(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def write_kubeconfig(path: Path, server: str, ca: Path, token: str, user: str = "lab",
                     token_file: Path | None = None) -> Path:
    """A kubeconfig (YAML; its strings JSON-quoted) for `server`, trusting `ca`, with `token`
    inline, or written to `token_file` and named there (tokenFile: clients re-read it, so a
    rotation is a new token in that file)."""
    q = json.dumps
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    if token_file is not None:
        _write_atomic(token_file, token)
    credential = f"tokenFile: {q(str(token_file))}" if token_file else f"token: {q(token)}"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: vxnet-lab
  cluster:
    server: {q(server)}
    certificate-authority-data: {q(ca_data)}
users:
- name: {q(user)}
  user:
    {credential}
contexts:
- name: vxnet-lab
  context:
    cluster: vxnet-lab
    user: {q(user)}
current-context: vxnet-lab
""")
    return path


# --- the process -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vxnet.lab.kubeapi", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="HOST:PORT ([v6]:PORT)")
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--cluster-cidr", default="10.244.0.0/16", help="'' for none")
    ap.add_argument("--node-cidr-mask", type=int, default=24)
    ap.add_argument("--cluster-cidr-v6", default="")
    ap.add_argument("--node-cidr-mask-v6", type=int, default=64)
    ap.add_argument("--compaction-window", type=int, default=1000,
                    help="watch events kept for resuming watches")
    ap.add_argument("--bookmark-interval", type=float, default=60.0,
                    help="seconds between BOOKMARK events on watches that allow them")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    ca, cert, key = ensure_tls(state_dir, host)
    tokens_path = state_dir / "tokens.csv"
    rows = read_tokens(tokens_path)
    if not any(r[1] == "admin" for r in rows):
        write_tokens(tokens_path, [*rows, token_row("admin")])
    admin = next(r[0] for r in read_tokens(tokens_path) if r[1] == "admin")
    write_kubeconfig(state_dir / "admin.kubeconfig", url_of(host, int(port)), ca, admin, "admin")
    pools = [CidrPool(c, m) for c, m in ((args.cluster_cidr, args.node_cidr_mask),
                                         (args.cluster_cidr_v6, args.node_cidr_mask_v6)) if c]
    store = Store(state_dir, pools, args.compaction_window)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    server = Server(host, int(port), store, Tokens(tokens_path), context,
                    args.bookmark_interval)
    print(f"serving on {url_of(host, int(port))}, state in {state_dir}", file=sys.stderr,
          flush=True)
    server.serve_forever()


class KubeApiServer(ServerProcess):
    """The simulator as a process of its own, for tests and the lab, shaped like EtcdServer.
    `admin_token` is made before the first start; `node_token(name)` makes a node's."""

    def __init__(self, host: str = "127.0.0.1", *, port: int | None = None,
                 netns: str | None = None, workdir: str | Path | None = None,
                 cluster_cidr: str = "10.244.0.0/16", node_cidr_mask: int = 24,
                 cluster_cidr_v6: str = "", node_cidr_mask_v6: int = 64,
                 compaction_window: int = 1000, bookmark_interval: float = 60.0) -> None:
        super().__init__(workdir, "vxnet-kubeapi-", "kubeapi.log", netns)
        self.host = host
        self.port = port or free_port()
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.args = ["--cluster-cidr", cluster_cidr, "--node-cidr-mask", str(node_cidr_mask),
                     "--cluster-cidr-v6", cluster_cidr_v6,
                     "--node-cidr-mask-v6", str(node_cidr_mask_v6),
                     "--compaction-window", str(compaction_window),
                     "--bookmark-interval", str(bookmark_interval)]
        self.admin_token = self.token_of("admin") or self.add_token("admin")

    @property
    def url(self) -> str:
        return url_of(self.host, self.port)

    @property
    def ca(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def tokens_path(self) -> Path:
        return self.state_dir / "tokens.csv"

    def start(self, timeout: float = 20.0, wait: bool = True) -> Self:
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self._spawn([sys.executable, "-m", "vxnet.lab.kubeapi", "--listen", listen,
                     "--state-dir", str(self.state_dir), *self.args])
        if wait:
            self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=1.0)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                content_type: str = "application/json", timeout: float = 10.0
                ) -> tuple[int, Any]:
        """One request as the admin (or `token`), from inside the server's namespace if it has
        one: (status, JSON body, or text when it is not JSON)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(self.host, self.port, context=context,
                                           timeout=timeout)
        with in_netns(self.netns):
            conn.connect()  # the socket is made, and stays, in the namespace
        try:
            data = None if body is None else body if isinstance(body, bytes) else \
                json.dumps(body).encode()
            conn.request(method, path, body=data, headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Content-Type": content_type, "Accept": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
        finally:
            conn.close()

    def compact(self) -> int:
        """Drop the watch history up to now: a watch resumed from before gets 410 Gone."""
        status, body = self.request("POST", "/lab/compact")
        if status != 200:
            raise RuntimeError(f"compact: {status} {body}")
        return int(body["resourceVersion"])

    def token_of(self, user: str) -> str | None:
        return next((r[0] for r in read_tokens(self.tokens_path) if r[1] == user), None)

    def add_token(self, user: str, token: str | None = None) -> str:
        """Another token for `user` ("admin", "system:node:<name>", anything else): returned."""
        row = token_row(user)
        row[0] = token or row[0]
        write_tokens(self.tokens_path, [*read_tokens(self.tokens_path), row])
        return row[0]

    def node_token(self, name: str) -> str:
        return self.token_of(f"system:node:{name}") or self.add_token(f"system:node:{name}")

    def remove_token(self, token: str) -> None:
        write_tokens(self.tokens_path, [r for r in read_tokens(self.tokens_path)
                                        if r[0] != token])

    def rotate_token(self, user: str) -> str:
        """A new token for `user`; the old ones stop working at once."""
        rows = [r for r in read_tokens(self.tokens_path) if r[1] != user]
        row = token_row(user)
        write_tokens(self.tokens_path, [*rows, row])
        if user == "admin":
            self.admin_token = row[0]
        return row[0]

    def kubeconfig(self, path: Path, token: str | None = None, user: str = "lab",
                   token_file: Path | None = None) -> Path:
        """A kubeconfig for this server with `token` (default: the admin's), inline or in
        `token_file` (see write_kubeconfig)."""
        return write_kubeconfig(path, self.url, self.ca, token or self.admin_token, user,
                                token_file)


if __name__ == "__main__":
    main()
