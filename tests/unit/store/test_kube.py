"""kubeconfig credentials: inline certificate data is used from memory and leaves no file."""

import base64
import tempfile

import pytest

from vxnet.errors import VxnetError
from vxnet.lab.kubeapi import ensure_tls
from vxnet.store.kube import Credentials, KubeClient


def b64(path):
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(path, cluster: str, user: str):
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:6443
{cluster}
users:
- name: u
  user:
{user}
contexts:
- name: x
  context: {{cluster: c, user: u}}
current-context: x
""")
    return str(path)


async def test_inline_certificates_are_loaded_without_leaving_files(tmp_path, monkeypatch):
    ca, cert, key = ensure_tls(tmp_path, "127.0.0.1")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    creds = Credentials.from_kubeconfig(kubeconfig(
        tmp_path / "kubeconfig", f"    certificate-authority-data: {b64(ca)}",
        f"    client-certificate-data: {b64(cert)}\n    client-key-data: {b64(key)}"))
    assert creds.ca_data == ca.read_bytes() and creds.cert_data == cert.read_bytes()
    assert creds.ca_file is None and creds.cert_file is None and creds.key_file is None
    client = KubeClient(creds)
    client_again = KubeClient(creds)  # every connection pool loads them again
    await client.close()
    await client_again.close()
    assert list(scratch.iterdir()) == []


def test_inline_data_that_is_not_base64_is_named(tmp_path):
    path = kubeconfig(tmp_path / "kubeconfig", "    certificate-authority-data: '%%%'",
                      "    token: t")
    with pytest.raises(VxnetError, match="certificate-authority-data is not base64"):
        Credentials.from_kubeconfig(path)


def test_inline_data_that_is_not_a_certificate_is_a_credentials_error(tmp_path):
    bogus = base64.b64encode(b"not a certificate").decode()
    creds = Credentials.from_kubeconfig(kubeconfig(
        tmp_path / "kubeconfig", f"    certificate-authority-data: {bogus}", "    token: t"))
    with pytest.raises(VxnetError, match="kubernetes API credentials"):
        KubeClient(creds)
