"""The store in the Kubernetes API, as flanneld's --kube-subnet-mgr keeps it: the network config
is net-conf.json (a file, from a ConfigMap), a node's lease is its Node's spec.podCIDR(s)
(allocated by the controller manager, never by us), and its VTEP is published in flannel's Node
annotations. Everyone's leases come from a list + watch of Nodes.

A Node is a peer once it carries `<prefix>/kube-subnet-manager: "true"` and a podCIDR, as in
flanneld; its annotations are decoded by the same code as an etcd lease value, so a vxnet and a
flanneld node see each other, and bad values are rejected with the same reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from vxnet.backoff import Backoff
from vxnet.errors import LeaseDecodeError, RevisionCompacted, StoreUnavailable, VxnetError
from vxnet.ip import IPAddress, contains, parse_ip
from vxnet.store.config import NetworkConfig, parse_config
from vxnet.store.kube import STRATEGIC, Gone, Json, KubeClient, KubeError, NotFound
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey, decode_value
from vxnet.store.store import (
    AttrsFor,
    EventKind,
    LeaseEvent,
    LeaseLost,
    NodeInfo,
    Snapshot,
    StoreStatus,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
# every call this store makes, as RBAC names it (deploy/kubernetes/vxnet-kube.yaml grants
# exactly these; tests/unit/store/test_kubestore.py checks both); and the one more it makes to
# find its node when NODE_NAME is not set (the manifest sets it)
RBAC = {"nodes": {"get", "list", "watch"}, "nodes/status": {"patch"}}
RBAC_WITHOUT_NODE_NAME = {"pods": {"get"}}
NODES = "/api/v1/nodes"
KEEP_EVERY = 60.0  # seconds between looks at our own Node when nothing asks sooner
WATCH_SECONDS = 300  # a watch is re-made this often (the server ends it), as client-go does
SILENCE = 90.0  # seconds without an event or bookmark before a watch is given up as dead
# Nodes a list asks for at a time: its memory is one page's. Real Nodes are 10-20 KB of JSON
# (status, images) and a decoded page of 500 cost the agent ~30 MiB of peak RSS; 100 keep it
# near etcd mode's (docs/benchmarks.md, "Kube mode")
PAGE = 100


class Annotations:
    """flannel's annotation names under a prefix."""

    def __init__(self, prefix: str) -> None:
        p = prefix.rstrip("/") + "/"
        self.backend_type, self.backend_data = p + "backend-type", p + "backend-data"
        self.backend_v6_data, self.public_ip = p + "backend-v6-data", p + "public-ip"
        self.public_ipv6, self.managed = p + "public-ipv6", p + "kube-subnet-manager"
        self.public_ip_overwrite = p + "public-ip-overwrite"
        self.public_ipv6_overwrite = p + "public-ipv6-overwrite"

    def of(self, attrs: LeaseAttrs) -> dict[str, str]:
        """What a node with these attributes publishes, exactly as flanneld writes it."""
        out = {self.backend_type: "vxlan", self.managed: "true"}
        if attrs.vtep_mac is not None and attrs.public_ip is not None:
            out[self.backend_data] = _compact({"VNI": attrs.vni, "VtepMAC": attrs.vtep_mac})
            out[self.public_ip] = str(attrs.public_ip)
        if attrs.vtep_mac6 is not None and attrs.public_ipv6 is not None:
            out[self.backend_v6_data] = _compact({"VNI": attrs.vni, "VtepMAC": attrs.vtep_mac6})
            out[self.public_ipv6] = str(attrs.public_ipv6)
        return out

    def attrs(self, key: str, ann: Mapping[str, str]) -> LeaseAttrs:
        """A Node's annotations as lease attributes, checked as an etcd lease value is."""
        doc: Json = {"PublicIP": ann.get(self.public_ip),
                     "PublicIPv6": ann.get(self.public_ipv6),
                     "BackendType": ann.get(self.backend_type)}
        for name, ann_key in (("BackendData", self.backend_data),
                              ("BackendV6Data", self.backend_v6_data)):
            if ann_key in ann:
                try:
                    doc[name] = json.loads(ann[ann_key])
                except ValueError:
                    raise LeaseDecodeError(key, f"annotation {ann_key} is not JSON") from None
        return decode_value(key, json.dumps(doc))

    def overwritten(self, attrs: LeaseAttrs, ann: Mapping[str, str]) -> LeaseAttrs:
        """Our attributes with the public addresses an operator pinned on our Node."""
        v4 = self._pinned(ann, self.public_ip_overwrite, 4)
        v6 = self._pinned(ann, self.public_ipv6_overwrite, 6)
        if isinstance(v4, IPv4Address):
            attrs = replace(attrs, public_ip=v4)
        if isinstance(v6, IPv6Address):
            attrs = replace(attrs, public_ipv6=v6)
        return attrs

    @staticmethod
    def _pinned(ann: Mapping[str, str], key: str, version: int) -> IPAddress | None:
        if not ann.get(key):
            return None
        try:
            return parse_ip(ann[key], version)
        except ValueError:
            log.warning("ignoring annotation %s=%r: not an IPv%d address", key, ann[key],
                        version)
            return None


def _compact(doc: Json) -> str:
    return json.dumps(doc, separators=(",", ":"))


async def node_name(client: KubeClient, fallback: str) -> str:
    """Our Node's name, found as flanneld finds it: NODE_NAME; else the node the pod
    POD_NAMESPACE/POD_NAME runs on; else `fallback` (--node-name)."""
    if os.environ.get("NODE_NAME"):
        return os.environ["NODE_NAME"]
    pod, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not pod or not namespace:
        return fallback
    doc = await client.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
    name = (doc.get("spec") or {}).get("nodeName")
    if not isinstance(name, str) or not name:
        raise VxnetError(f"pod {namespace}/{pod} (POD_NAMESPACE/POD_NAME) names no node")
    return name


def pod_cidrs(node: Json, cfg: NetworkConfig) -> SubnetKey | None:
    """The Node's podCIDRs as a subnet key for the families the network has (None: none yet).
    Raises ValueError for values that are not subnets."""
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for text in cidrs:
        if not isinstance(text, str):
            raise ValueError(f"podCIDR {text!r} is not a string")
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            raise ValueError(f"podCIDR {text!r} is not a subnet") from None
        if isinstance(net, IPv4Network):
            v4 = net
        else:
            v6 = net
    if (cfg.ipv4 is not None and v4 is None) or (cfg.ipv6 is not None and v6 is None):
        return None
    return SubnetKey(v4 if cfg.ipv4 else None, v6 if cfg.ipv6 else None)


def _network_up(node: Json) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == "NetworkUnavailable"
               and c.get("status") == "False" for c in conditions)


def _name(node: Json) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


def _annotations(node: Json) -> dict[str, str]:
    ann = (node.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in ann.items() if isinstance(v, str)}


def _rv(obj: Json) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _revision(rv: str) -> int:
    return int(rv) if rv.isdigit() else 0  # opaque to clients; etcd's revision in practice


class KubeStore:
    def __init__(self, client: KubeClient, node_name: str, *, prefix: str = DEFAULT_PREFIX,
                 net_conf_path: str) -> None:
        self.client, self.node_name = client, node_name
        self.ann = Annotations(prefix)
        self.net_conf_path = net_conf_path
        self._lease: Lease | None = None
        self._attrs_for: AttrsFor | None = None
        self._check = asyncio.Event()
        self._unlisted = False  # acquired, and everyone's Nodes not listed since
        self._leases: dict[str, int] = {}  # lease key -> its fingerprint, of every peer Node
        self._keys: dict[str, str] = {}  # Node name -> its lease key (or invalid key)
        self._invalid: dict[str, LeaseDecodeError] = {}
        self._rv = ""  # where the watch resumes
        self._cfg: NetworkConfig | None = None
        self.renewals = self.losses = self.takeovers = 0
        self.rewatches = self.relists = 0
        self.watching = False  # a watch is open (the server accepted it, and it is not dead)
        self._announced = False  # ready() said the network is up

    # -- config ----------

    async def config(self) -> NetworkConfig:
        try:
            raw = Path(self.net_conf_path).read_text()
        except OSError as e:
            raise VxnetError(f"--net-config-path {self.net_conf_path}: {e.strerror}") from None
        return parse_config(raw)

    # -- this node's lease ----------

    async def acquire(self, cfg: NetworkConfig, node: NodeInfo, attrs_for: AttrsFor,
                      prefer: SubnetKey | None) -> Lease:
        """Our Node's podCIDRs, once the controller manager has assigned them (until then
        StoreUnavailable says so, and start-up waits), with our annotations on the Node."""
        self._cfg, self._attrs_for = cfg, attrs_for
        lease = await self._publish(await self._own(cfg), attrs_for)
        self._lease = lease
        self._unlisted = True  # everyone's Nodes: listing(), page by page
        return lease

    async def _own(self, cfg: NetworkConfig) -> tuple[Json, SubnetKey]:
        try:
            obj = await self.client.get(f"{NODES}/{self.node_name}")
        except NotFound:
            raise StoreUnavailable(f"Node {self.node_name} is not registered (yet)") from None
        try:
            key = pod_cidrs(obj, cfg)
        except ValueError as e:
            raise VxnetError(f"Node {self.node_name}: {e}") from None
        if key is None:
            raise StoreUnavailable(f"Node {self.node_name} has no podCIDR for every enabled "
                                   "family yet (assigned by the controller manager)")
        outside = [f"{n} is outside {p.network}" for n, p in (
            (key.subnet, cfg.ipv4), (key.subnet6, cfg.ipv6)) if n and p and not contains(
                p.network, n)]
        if outside:
            raise VxnetError(f"Node {self.node_name}: podCIDR {'; '.join(outside)} (the "
                             f"network of {self.net_conf_path})")
        return obj, key

    async def _publish(self, own: tuple[Json, SubnetKey], attrs_for: AttrsFor) -> Lease:
        """Our annotations on our Node (written only where they differ)."""
        obj, key = own
        have = _annotations(obj)
        attrs = self.ann.overwritten(attrs_for(key), have)
        want = self.ann.of(attrs)
        rv = _rv(obj)
        if any(have.get(k) != v for k, v in want.items()):
            # through the status subresource, as flanneld does: its RBAC grants patch there
            got = await self.client.patch(f"{NODES}/{self.node_name}/status",
                                          {"metadata": {"annotations": want}}, STRATEGIC)
            rv = _rv(got)
        return Lease(key, attrs, 0, _revision(rv))

    async def ready(self) -> None:
        """The node's network is up (first sync done): keep() sets NetworkUnavailable=False on
        our Node, as flanneld does, at once and whenever someone changes it."""
        self._announced = True
        self.check_soon()

    async def _network_available(self) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition = {"type": "NetworkUnavailable", "status": "False", "reason": "VxnetIsUp",
                     "message": "vxnet is running on this node", "lastTransitionTime": now,
                     "lastHeartbeatTime": now}
        await self.client.patch(f"{NODES}/{self.node_name}/status",
                                {"status": {"conditions": [condition]}}, STRATEGIC)

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            raise RuntimeError("the store was asked about our lease before acquire()")
        return self._lease

    def check_soon(self) -> None:
        self._check.set()

    async def keep(self, cfg: NetworkConfig, on_lost: Callable[[LeaseLost], Awaitable[None]]
                   ) -> None:
        """Look at our Node whenever its watch event says it changed (and every minute):
        our annotations overwritten by someone else are put back and counted; new podCIDRs
        (the Node deleted and registered again, say) are a lease lost and followed."""
        backoff = Backoff(0.5, 10)
        delay = KEEP_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check.wait(), delay)
            self._check.clear()
            try:
                await self._verify(cfg, on_lost)
                backoff.reset()
                delay = KEEP_EVERY
            except (StoreUnavailable, KubeError) as e:
                delay = backoff.next_delay()
                log.warning("our Node %s: %s; looking again in %.1fs", self.node_name, e, delay)

    async def _verify(self, cfg: NetworkConfig,
                      on_lost: Callable[[LeaseLost], Awaitable[None]]) -> None:
        old, attrs_for = self.lease, self._attrs_for
        if attrs_for is None:
            raise RuntimeError("keep() before acquire()")
        obj, key = await self._own(cfg)
        if key != old.key:
            self.losses += 1
            new = self._lease = await self._publish((obj, key), attrs_for)
            await on_lost(LeaseLost(old, new, f"the Node's podCIDRs are now {key}"))
            return
        have = _annotations(obj)
        want = self.ann.of(self.ann.overwritten(attrs_for(key), have))
        if self._announced and not _network_up(obj):
            log.info("Node %s: NetworkUnavailable=False", self.node_name)
            await self._network_available()
        if any(have.get(k) != v for k, v in want.items()):
            self.takeovers += 1
            log.warning("our Node %s's annotations were changed by someone else (%s): putting "
                        "ours back", self.node_name, ", ".join(
                            f"{k}={have.get(k)!r}" for k, v in want.items() if have.get(k) != v))
            self._lease = await self._publish((obj, key), attrs_for)
        self.renewals += 1

    async def move(self, node: NodeInfo, attrs_for: AttrsFor) -> None:
        """New public addresses: published on our Node."""
        if self._cfg is None:
            raise RuntimeError("move() before acquire()")
        self._attrs_for = attrs_for
        self._lease = await self._publish(await self._own(self._cfg), attrs_for)
        log.warning("Node %s now says %s", self.node_name, ", ".join(
            str(a) for a in (self._lease.attrs.public_ip, self._lease.attrs.public_ipv6) if a))

    # -- everyone's leases ----------

    def _lease_of(self, obj: Json, cfg: NetworkConfig) -> Lease | LeaseDecodeError | None:
        """A peer's lease from its Node; None for a Node that is no peer (yet)."""
        ann = _annotations(obj)
        if ann.get(self.ann.managed) != "true":
            return None
        try:
            key = pod_cidrs(obj, cfg)
        except ValueError as e:
            return LeaseDecodeError(f"node/{_name(obj)}", str(e))
        if key is None:
            return None
        try:
            return Lease(key, self.ann.attrs(str(key), ann), 0, _revision(_rv(obj)))
        except LeaseDecodeError as e:
            return e

    async def _nodes(self) -> AsyncGenerator[tuple[list[Json], str], None]:
        """Every Node, a page at a time, with the list's resourceVersion (its first page's, as
        every continued page must say; the watch resumes from it): a list of 5 000
        real Nodes (status, images) is tens of MB of JSON, and a page (and the next, asked for
        meanwhile) is all that is held at once. A continue token the server no longer honours
        (410: the list outlived its history) raises Gone; the caller lists again."""
        asking = asyncio.ensure_future(self.client.get(NODES, {"limit": str(PAGE)}))
        rv = ""
        try:
            while True:
                doc = await asking
                rv = rv or _rv(doc)
                meta = doc.get("metadata") or {}
                items = [obj for obj in doc.get("items") or [] if isinstance(obj, dict)]
                token = meta.get("continue") if isinstance(meta, dict) else None
                if token:  # the next page is on its way while the caller takes this one
                    asking = asyncio.ensure_future(self.client.get(
                        NODES, {"limit": str(PAGE), "continue": str(token)}))
                yield items, rv
                if not token:
                    return
        finally:  # the caller stopped early, or a page failed: no request left behind, and
            asking.cancel()  # the failure of one that ended meanwhile retrieved
            await asyncio.gather(asking, return_exceptions=True)

    async def listing(self) -> AsyncIterator[Snapshot]:
        """Every Node, a page as the API server answers it (the first sync programs each while
        the next is asked for), all at the first page's resourceVersion, which the watch
        continues from once the last page is in. A continue token that expired meanwhile (the
        list outlived the server's history) raises RevisionCompacted: the caller lists again."""
        cfg = self._cfg
        if cfg is None or not self._unlisted:
            raise RuntimeError("listing() without a new acquire()")
        fingerprints: dict[str, int] = {}
        invalid: dict[str, LeaseDecodeError] = {}
        keys: dict[str, str] = {}
        rv = ""
        try:
            async with contextlib.aclosing(self._nodes()) as pages:
                async for items, rv in pages:  # rv: the list's, kept after
                    page: dict[str, Lease] = {}
                    page_invalid: dict[str, LeaseDecodeError] = {}
                    for obj in items:
                        got = self._lease_of(obj, cfg)
                        if isinstance(got, Lease):
                            page[str(got.key)] = got
                            keys[_name(obj)] = str(got.key)
                        elif got is not None:
                            page_invalid[got.key] = got
                            keys[_name(obj)] = got.key
                    fingerprints.update((k, lease.fingerprint()) for k, lease in page.items())
                    invalid.update(page_invalid)
                    yield Snapshot(page, page_invalid, _revision(rv))
        except Gone as e:
            raise RevisionCompacted(f"Node list: {e}") from None
        self._invalid, self._keys, self._rv, self._leases = invalid, keys, rv, fingerprints
        self._unlisted = False

    async def watch(self) -> AsyncIterator[list[LeaseEvent]]:
        """Node changes from the snapshot on, as lease events; a dead or silent watch is
        resumed from the last resourceVersion seen (bookmarks included), and a history too
        old to resume from (410 Gone) is a re-list turned into the events it implies."""
        cfg = self._cfg
        if cfg is None:
            raise RuntimeError("watch() before acquire()")
        backoff = Backoff(0.2, 10)
        while True:
            try:
                params = {"resourceVersion": self._rv, "allowWatchBookmarks": "true",
                          "timeoutSeconds": str(WATCH_SECONDS)}
                async for event in self.client.watch(NODES, params, SILENCE, self._opened):
                    batch = self._fold(event, cfg)
                    backoff.reset()
                    if batch:
                        yield batch
                self.rewatches += 1  # the server ended it (timeoutSeconds): resume
            except Gone:
                self.watching = False
                self.relists += 1
                log.warning("Node watch: history compacted past %s; re-listing", self._rv)
                try:
                    relisted = await self._relist(cfg)
                except (StoreUnavailable, KubeError) as e:  # the next turn lists again
                    log.warning("Node re-list: %s", e)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                yield relisted
            except (StoreUnavailable, KubeError) as e:
                self.watching = False
                self.rewatches += 1
                delay = backoff.next_delay()
                log.warning("Node watch: %s; resuming from %s in %.1fs", e, self._rv, delay)
                await asyncio.sleep(delay)

    def _opened(self) -> None:
        self.watching = True

    def _fold(self, event: Json, cfg: NetworkConfig) -> list[LeaseEvent]:
        kind, obj = event.get("type"), event.get("object") or {}
        if not isinstance(obj, dict):
            return []
        if kind == "ERROR":
            status = int(obj.get("code", 0) or 0)
            if status == 410:
                raise Gone(410, str(obj.get("reason", "Expired")), str(obj.get("message", "")))
            raise KubeError(status, str(obj.get("reason", "")), str(obj.get("message", "")))
        rv = _rv(obj)
        if rv:
            self._rv = rv
        if kind == "BOOKMARK":
            return []
        name = _name(obj)
        got = None if kind == "DELETED" else self._lease_of(obj, cfg)
        return self._set(name, got, _revision(rv))

    def _set(self, name: str, got: Lease | LeaseDecodeError | None, revision: int
             ) -> list[LeaseEvent]:
        """Node `name` now stands for `got`: the lease events that follows from that."""
        out: list[LeaseEvent] = []
        old_key = self._keys.pop(name, None)
        new_key = None if got is None else str(got.key) if isinstance(got, Lease) else got.key
        if old_key is not None and old_key != new_key:
            self._leases.pop(old_key, None)
            self._invalid.pop(old_key, None)
            out.append(LeaseEvent(EventKind.REMOVED, old_key, None, revision))
        if isinstance(got, Lease) and new_key is not None:
            self._keys[name] = new_key
            before, self._leases[new_key] = self._leases.get(new_key), got.fingerprint()
            if before != self._leases[new_key]:
                kind = EventKind.ADDED if before is None else EventKind.CHANGED
                out.append(LeaseEvent(kind, new_key, got, revision))
        elif isinstance(got, LeaseDecodeError) and new_key is not None:
            self._keys[name] = new_key
            self._leases.pop(new_key, None)
            self._invalid[new_key] = got
            out.append(LeaseEvent(EventKind.INVALID, new_key, None, revision, got))
        return out

    async def _relist(self, cfg: NetworkConfig) -> list[LeaseEvent]:
        before = dict(self._keys)
        # read whole before anything changes (Gone half-way: the watch's loop lists again),
        # each page kept as what it says of its Nodes' leases only
        found: dict[str, Lease | LeaseDecodeError | None] = {}
        rv = ""
        async with contextlib.aclosing(self._nodes()) as pages:
            async for items, rv in pages:  # noqa: B007 (the list's: kept after)
                found.update((_name(obj), self._lease_of(obj, cfg)) for obj in items)
        revision, seen = _revision(rv), set(found)
        out: list[LeaseEvent] = []
        for name, got in found.items():
            out += self._set(name, got, revision)
        for name in before.keys() - seen:
            out += self._set(name, None, revision)
        self._rv = rv
        return out

    # -- the rest of the seam ----------

    async def reconnect(self) -> None:
        await self.client.reconnect()

    async def close(self) -> None:
        await self.client.close()

    def status(self) -> StoreStatus:
        return StoreStatus(self.client.server, None, self.client.reconnects,
                           self.rewatches + self.relists, self.renewals, self.losses,
                           self.takeovers, self.watching)
