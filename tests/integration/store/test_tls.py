"""etcd over TLS with client certificates, as --etcd-cafile/--etcd-certfile/--etcd-keyfile
configure it: certificates made by the test, a real etcd requiring them."""

import shutil
import subprocess

import pytest

from vxnet.errors import StoreUnavailable, VxnetError
from vxnet.lab.etcd import EtcdServer
from vxnet.store.etcd import Etcd, TLSFiles

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
