"""etcd with authentication on: the right user works inside its prefix, and everything else is a
clear StoreAuthError, never a traceback or an endless retry."""

import asyncio

import pytest

from vxnet.errors import StoreAuthError, StoreUnavailable
from vxnet.lab.etcd import EtcdServer
from vxnet.store.etcd import Credentials, Etcd

PREFIX = "/vxnet-auth/network"


@pytest.fixture
def auth_etcd(tmp_path):
    srv = EtcdServer(workdir=tmp_path / "etcd", extra_args=("--auth-token-ttl", "1"))
    srv.start()
    try:
        srv.enable_auth(PREFIX, "node", "s3cret")
        yield srv
    finally:
        srv.close()


async def test_the_right_user_reads_and_writes_its_prefix(auth_etcd):
    etcd = Etcd(auth_etcd.endpoint, timeout=2, auth=Credentials("node", "s3cret"))
    try:
        await etcd.put(f"{PREFIX}/config".encode(), b"{}")
        assert (await etcd.get(f"{PREFIX}/config".encode())).value == b"{}"
        lease = await etcd.grant(10)
        await etcd.put(f"{PREFIX}/subnets/x".encode(), b"1", lease)
        with pytest.raises(StoreAuthError, match="permission denied to user 'node'"):
            await etcd.get(b"/elsewhere")
    finally:
        await etcd.close()


async def test_an_expired_token_is_renewed_by_logging_in_again(auth_etcd):
    etcd = Etcd(auth_etcd.endpoint, timeout=2, auth=Credentials("node", "s3cret"))
    try:
        await etcd.put(f"{PREFIX}/a".encode(), b"1")
        await asyncio.sleep(2.5)  # past --auth-token-ttl: etcd forgets the simple token
        for _ in range(3):
            try:
                assert (await etcd.get(f"{PREFIX}/a".encode())).value == b"1"
                break
            except StoreUnavailable:
                continue
        else:
            pytest.fail("no answer after logging in again")
    finally:
        await etcd.close()


@pytest.mark.parametrize("auth", [Credentials("node", "wrong"), Credentials("nobody", "x"), None])
async def test_wrong_or_missing_credentials_are_a_clear_error(auth_etcd, auth):
    etcd = Etcd(auth_etcd.endpoint, timeout=2, auth=auth)
    try:
        with pytest.raises(StoreAuthError) as e:
            await etcd.get(f"{PREFIX}/config".encode())
        assert "\n" not in str(e.value)
    finally:
        await etcd.close()
