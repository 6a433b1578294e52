"""A small client for the part of the Kubernetes API that kube mode uses (Nodes: get, list,
watch, patch; one Pod get to find our node), over httpx.

Why not a full client: kube mode needs five calls, and what it keeps of a Node is its name,
podCIDRs and a few annotations. A thin layer decodes the JSON once and keeps nothing else (a
generated client builds a typed object per Node, every field of its status included, which
is most of an agent's memory at 5 000 Nodes), and every call has a timeout, as every I/O call
here must. httpx (HTTP/1.1, TLS) is the well-kept piece underneath.

Credentials: a kubeconfig (client certificate or bearer token, the server's CA), or the
in-cluster service account (token, CA, KUBERNETES_SERVICE_HOST/PORT). A token file is re-read
when it changes: bound service-account tokens rotate under a running agent.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from vxnet.errors import StoreUnavailable, VxnetError
from vxnet.store.transport import exchange, why

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = 10.0  # seconds for one request
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"

Json = dict[str, Any]


class KubeError(VxnetError):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"kubernetes API: {status} {reason}: {message}")
        self.status, self.reason = status, reason


class Unauthorized(KubeError):
    """401: the credentials were refused (at start-up: the end; later: retried)."""


class Forbidden(KubeError):
    """403: RBAC does not allow it."""


class NotFound(KubeError):
    pass


class Gone(KubeError):
    """410: the resourceVersion asked for is older than the server's history."""


class ServerBusy(KubeError, StoreUnavailable):
    """429 or 5xx (API Priority and Fairness shedding load, a restarting server, a proxy in
    front of it): unavailable for now, retried as any unavailability is."""


_ERRORS: dict[int, type[KubeError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound,
                                       410: Gone, 429: ServerBusy}


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how we prove who we are."""

    server: str
    ca_file: str | None = None
    token: str | None = None
    token_file: str | None = None  # re-read when it changes
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # kubeconfig's insecure-skip-tls-verify (never the default)
    # a kubeconfig's inline `<key>-data`, kept in memory instead of the files above
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None

    @classmethod
    def load(cls, kubeconfig: str | None, api_url: str | None) -> Credentials:
        """As flanneld (client-go's BuildConfigFromFlags): a kubeconfig if given, its server
        replaced by api_url if given; else the in-cluster service account."""
        if kubeconfig:
            creds = cls.from_kubeconfig(kubeconfig)
        elif api_url and not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls(api_url)
        else:
            creds = cls.in_cluster()
        return replace(creds, server=api_url) if api_url else creds

    @classmethod
    def in_cluster(cls) -> Credentials:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
            "KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise VxnetError("kube mode needs --kubeconfig-file, or to run in a pod "
                             "(KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)")
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", str(SERVICE_ACCOUNT / "ca.crt"),
                   token_file=str(SERVICE_ACCOUNT / "token"))

    @classmethod
    def from_kubeconfig(cls, path: str) -> Credentials:
        where = f"--kubeconfig-file {path}"
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise VxnetError(f"{where}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise VxnetError(f"{where}: not YAML: {e}") from None
        if not isinstance(doc, dict):
            raise VxnetError(f"{where}: not a kubeconfig")
        base = Path(path).resolve().parent
        ctx_name = doc.get("current-context")
        ctx = _named(doc, "contexts", ctx_name, "context", where) if ctx_name else \
            _only(doc, "contexts", "context", where)
        cluster = _named(doc, "clusters", ctx.get("cluster"), "cluster", where)
        user = _named(doc, "users", ctx.get("user"), "user", where) if ctx.get("user") else {}
        server = cluster.get("server")
        if not isinstance(server, str) or not server:
            raise VxnetError(f"{where}: the cluster has no server")
        return cls(server,
                   _file(base, cluster, "certificate-authority"),
                   token=user.get("token"),
                   token_file=_file(base, user, "tokenFile"),
                   cert_file=_file(base, user, "client-certificate"),
                   key_file=_file(base, user, "client-key"),
                   insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
                   ca_data=_data(cluster, "certificate-authority", where),
                   cert_data=_data(user, "client-certificate", where),
                   key_data=_data(user, "client-key", where))


def _named(doc: Json, section: str, name: Any, inner: str, where: str) -> Json:
    for item in doc.get(section) or ():
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(inner)
            if isinstance(value, dict):
                return value
    raise VxnetError(f"{where}: no {inner} named {name!r} in {section}")


def _only(doc: Json, section: str, inner: str, where: str) -> Json:
    items = doc.get(section) or []
    if len(items) != 1:
        raise VxnetError(f"{where}: no current-context, and not exactly one {inner}")
    return _named(doc, section, items[0].get("name"), inner, where)


def _file(base: Path, section: Json, key: str) -> str | None:
    """A path from the kubeconfig (relative to it)."""
    value = section.get(key)
    return str(base / value) if isinstance(value, str) and value else None


def _data(section: Json, key: str, where: str) -> bytes | None:
    """The kubeconfig's inline `<key>-data`, decoded (client-go prefers it to the file)."""
    value = section.get(f"{key}-data")
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise VxnetError(f"{where}: {key}-data is not base64") from None


def _load_cert_chain(ctx: ssl.SSLContext, c: Credentials) -> None:
    """Our client certificate and key into `ctx`. The ssl module reads them only from files:
    inline ones go through a private directory removed as soon as they are read (they were
    once left in /tmp, one file per connection)."""
    if c.cert_data is None and c.key_data is None:
        if c.cert_file:
            ctx.load_cert_chain(c.cert_file, c.key_file)
        return
    with tempfile.TemporaryDirectory(prefix="vxnet-kube-") as d:  # mode 0700
        cert = _written(Path(d, "cert.pem"), c.cert_data) or c.cert_file
        key = _written(Path(d, "key.pem"), c.key_data) or c.key_file
        if cert is None:
            raise ssl.SSLError("a client key without a client certificate")
        ctx.load_cert_chain(cert, key)


def _written(path: Path, data: bytes | None) -> str | None:
    if data is None:
        return None
    path.write_bytes(data)
    return str(path)


class KubeClient:
    def __init__(self, creds: Credentials, timeout: float = TIMEOUT) -> None:
        self.creds, self.timeout = creds, timeout
        self.reconnects = 0
        self._token: str | None = creds.token
        self._token_stamp: tuple[int, int] | None = None
        self._http = self._open()

    @property
    def server(self) -> str:
        return self.creds.server

    def _open(self) -> httpx.AsyncClient:
        c = self.creds
        verify: ssl.SSLContext | bool = True
        if c.insecure:
            verify = False
        else:
            try:
                ca = c.ca_data.decode("ascii") if c.ca_data is not None else None
                verify = ssl.create_default_context(
                    cafile=None if ca is not None else c.ca_file, cadata=ca)
                _load_cert_chain(verify, c)
            except (OSError, ssl.SSLError, UnicodeDecodeError) as e:
                raise VxnetError(f"kubernetes API credentials: {e}") from None
        return httpx.AsyncClient(base_url=c.server, verify=verify,
                                 timeout=httpx.Timeout(self.timeout))

    async def reconnect(self) -> None:
        """New connections (ours left from an address we no longer have)."""
        old, self._http = self._http, self._open()
        self.reconnects += 1
        await old.aclose()

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        """The bearer token, re-read from its file whenever the file changed."""
        path = self.creds.token_file
        if path:
            try:
                st = os.stat(path)
                stamp = (st.st_mtime_ns, st.st_ino)
                if stamp != self._token_stamp:
                    self._token = Path(path).read_text().strip()
                    self._token_stamp = stamp
            except OSError as e:
                raise StoreUnavailable(f"kubernetes API token {path}: {e.strerror}") from None
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Json | list[Json] | None = None, content_type: str | None = None
                      ) -> Json:
        headers = {"Accept": "application/json", **self._headers()}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            status, raw = await exchange(
                self._http, method, path, params=params, headers=headers,
                content=None if body is None else json.dumps(body).encode())
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"kubernetes API {self.server}: {why(e)}") from None
        if status >= 400:
            raise _error(status, raw)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise StoreUnavailable(f"kubernetes API {self.server}: {method} {path}: the answer "
                                   "is not JSON") from None
        if not isinstance(doc, dict):
            raise StoreUnavailable(f"kubernetes API {self.server}: {method} {path}: the answer "
                                   "is not an object")
        return doc

    async def get(self, path: str, params: dict[str, str] | None = None) -> Json:
        return await self.request("GET", path, params=params)

    async def patch(self, path: str, body: Json, content_type: str = MERGE) -> Json:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def watch(self, path: str, params: dict[str, str], silence: float,
                    on_open: Callable[[], None] = lambda: None) -> AsyncIterator[Json]:
        """A watch stream's events, one decoded JSON object per line. A stream silent for
        `silence` seconds (no event, no bookmark) ends with StoreUnavailable: a black-holed
        connection or a frozen server is noticed, and the caller resumes elsewhere."""
        headers = {"Accept": "application/json", **self._headers()}
        timeout = httpx.Timeout(self.timeout, read=silence)
        try:
            async with self._http.stream("GET", path, params={**params, "watch": "1"},
                                         headers=headers, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    raise _error(resp.status_code, await resp.aread())
                on_open()
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise StoreUnavailable(f"kubernetes API {self.server}: a watch event "
                                               "is not JSON") from None
                    if isinstance(event, dict):
                        yield event
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"kubernetes API {self.server}: watch: {why(e)}") from None


def _error(status: int, raw: bytes) -> KubeError:
    """The API server's Status object (or whatever it sent) as an exception."""
    reason, message = "", raw[:200].decode(errors="replace")
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            reason, message = str(doc.get("reason", "")), str(doc.get("message", message))
    except ValueError:
        pass
    kind = _ERRORS.get(status, ServerBusy if status >= 500 else KubeError)
    return kind(status, reason, message)
