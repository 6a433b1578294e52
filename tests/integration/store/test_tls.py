"""etcd over TLS with client certificates, as --etcd-cafile/--etcd-certfile/--etcd-keyfile
configure it: certificates made by the test, a real etcd requiring them."""

import asyncio
import shutil
import subprocess

import pytest

from vxnet.errors import StoreAuthError, StoreUnavailable, VxnetError
from vxnet.lab.etcd import EtcdServer
from vxnet.store import txn
from vxnet.store.etcd import Credentials, Etcd, TLSFiles

if not shutil.which("openssl") or not shutil.which("etcd"):
    pytest.skip("needs openssl and etcd-server (run `make test`)", allow_module_level=True)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(d, name, ext):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext",
            cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture
def tls_etcd(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj",
            "/CN=vxnet-test-ca", cwd=d)
    server = issue(d, "server", "subjectAltName=IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth,clientAuth\n")
    client = issue(d, "client", "extendedKeyUsage=clientAuth\n")
    srv = EtcdServer(workdir=tmp_path / "etcd", tls=(d / "ca.crt", *server))
    srv.client_tls = (d / "ca.crt", *client)
    srv.start()
    try:
        yield srv, TLSFiles(str(d / "ca.crt"), str(client[0]), str(client[1]))
    finally:
        srv.close()


async def test_client_certificates_reach_a_tls_etcd(tls_etcd):
    srv, files = tls_etcd
    assert srv.endpoint.startswith("https://")
    etcd = Etcd(srv.endpoint, tls=files, timeout=3)
    try:
        await etcd.put(b"/vxnet-tls/k", b"v")
        assert (await etcd.get(b"/vxnet-tls/k")).value == b"v"
    finally:
        await etcd.close()


async def test_without_a_client_certificate_it_is_unavailable_not_a_crash(tls_etcd):
    srv, files = tls_etcd
    etcd = Etcd(srv.endpoint, tls=TLSFiles(files.cafile), timeout=2)
    try:
        with pytest.raises(StoreUnavailable):
            await etcd.get(b"/vxnet-tls/k")
    finally:
        await etcd.close()


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(VxnetError, match=r"--etcd-cafile .*/nope.pem: No such file or directory"):
        TLSFiles(str(tmp_path / "nope.pem")).context()


async def test_a_common_name_refused_by_the_gateway_moves_the_client_to_grpc(tls_etcd):
    """etcd with --client-cert-auth and authentication on refuses, on its JSON gateway, every
    client certificate that carries a Common Name (it cannot pass the name on). The client
    then talks gRPC to it: the same answers, a watch included."""
    srv, files = tls_etcd
    srv.enable_auth("/vxnet-tls", "node", "s3cret")
    etcd = Etcd(srv.endpoint, tls=files, timeout=3, auth=Credentials("node", "s3cret"))
    try:
        assert await etcd.get(b"/vxnet-tls/k") is None  # refused, then asked again over gRPC
        assert etcd.grpc
        revision = await etcd.put(b"/vxnet-tls/k", b"v")
        assert (await etcd.get(b"/vxnet-tls/k")).value == b"v"
        ok, got = await etcd.txn([txn.mod_is(b"/vxnet-tls/k", revision)],
                                 [txn.put(b"/vxnet-tls/k", b"w"), txn.get(b"/vxnet-tls/k")])
        assert ok and got[0].value == b"w"
        lease = await etcd.grant(30)
        assert await etcd.refresh(lease) > 0
        watch = etcd.watch_prefix(b"/vxnet-tls/", revision)
        events = await asyncio.wait_for(anext(watch), 5)
        assert [e.kv.value for e in events] == [b"v", b"w"]  # history: one answer
        await watch.aclose()
        with pytest.raises(StoreAuthError, match="permission denied"):
            await etcd.get(b"/elsewhere")
    finally:
        await etcd.close()
