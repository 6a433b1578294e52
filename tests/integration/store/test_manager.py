import asyncio
import ipaddress as ipa
import json

import pytest

from tests.waiting import until
from vxnet.errors import ConfigError, ExhaustedError
from vxnet.store.etcd import Etcd
from vxnet.store.lease import LeaseAttrs, SubnetKey
from vxnet.store.manager import LeaseManager, read_config
from vxnet.store.nodeid import node_id
from vxnet.store.store import EventKind, NodeInfo
from vxnet.store.watcher import LeaseWatcher

NET = {"Network": "10.244.0.0/16"}


def node(i: int) -> NodeInfo:
    return NodeInfo(f"node-{i}", ipa.ip_address(f"198.51.100.{i}"))


def attrs_for(n: NodeInfo):
    def make(key: SubnetKey) -> LeaseAttrs:
        return LeaseAttrs(n.public_ip, "0e:00:00:00:00:%02x" % (int(n.public_ip) & 0xFF), 1)
    return make


async def setup_config(etcd, paths, doc=None):
    await etcd.put(paths.config, json.dumps(doc or NET).encode())
    return await read_config(etcd, paths)


def at(third: int) -> SubnetKey:
    """A /24 of NET named by its third octet, for leases a test places rather than draws."""
    return SubnetKey(ipa.ip_network(f"10.244.{third}.0/24"))


def manager(etcd, paths, i, **kw):
    n = node(i)
    return LeaseManager(etcd, paths, n, attrs_for(n), **kw)


async def test_missing_and_invalid_config(etcd, paths):
    with pytest.raises(ConfigError, match=r"no network config at /vxnet-test/.*/config"):
        await read_config(etcd, paths)
    await etcd.put(paths.config, b'{"Network": 7}')
    with pytest.raises(ConfigError, match="Network: expected a string"):
        await read_config(etcd, paths)


async def test_fifty_concurrent_acquirers_all_succeed(etcd_server, etcd, paths):
    # 63 subnets for 50 nodes: random picks collide often, so the retry path is exercised.
    cfg = await setup_config(etcd, paths, {"Network": "10.244.0.0/18"})
    clients = [Etcd(etcd_server.endpoint, timeout=5) for _ in range(50)]
    try:
        leases = await asyncio.gather(*(
            LeaseManager(c, paths, node(i), attrs_for(node(i)), ttl=60).acquire(cfg)
            for i, c in enumerate(clients, 1)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    subnets = [lease.key.subnet for lease in leases]
    assert len(set(subnets)) == 50
    kvs, _ = await etcd.get_prefix(paths.subnets)
    assert len(kvs) == 50


async def test_restart_reuses_lease_untouched(etcd, paths):
    cfg = await setup_config(etcd, paths)
    first = await manager(etcd, paths, 1, ttl=60).acquire(cfg)
    again = await manager(etcd, paths, 1, ttl=60).acquire(cfg)
    assert again == first  # same subnet, same etcd lease, same revision: nothing was written


async def test_a_restart_naming_its_lease_reads_only_that_and_lists_afterwards(etcd, paths):
    cfg = await setup_config(etcd, paths)
    # placed, not drawn: a random pick could be the subnet the loop below calls free
    first = await manager(etcd, paths, 1, ttl=60).acquire(cfg, prefer=at(1))
    other = await manager(etcd, paths, 2, ttl=60).acquire(cfg, prefer=at(2))
    m = manager(etcd, paths, 1, ttl=60)
    assert await m.acquire(cfg, prefer=first.key) == first  # untouched
    assert m.take_snapshot() is None  # nobody's leases listed yet: the agent lists them
    await m.sweep()
    assert {kv.key for kv in (await etcd.get_prefix(paths.subnets))[0]} == {
        paths.subnet(str(k)) for k in (first.key, other.key)}
    # not ours by name (flanneld's, another node's, or no lease there): everything is looked at
    for prefer in (other.key, at(250)):
        m = manager(etcd, paths, 1, ttl=60)
        assert await m.acquire(cfg, prefer=prefer) == first
        assert len(m.take_snapshot().leases) == 2


async def test_the_sweep_after_a_quick_restart_removes_what_our_name_held_before(etcd, paths):
    cfg = await setup_config(etcd, paths)
    # placed, not drawn: a random pick landed on 10.244.200.0/24 once and the test failed
    old = await manager(etcd, paths, 1, ttl=60).acquire(cfg, prefer=at(100))
    # the node's lease under another subnet, written by hand (as a node that moved would
    # leave it), and a reservation in its name, which stays
    new_key = at(200)
    lease_id = await etcd.grant(60)
    for key, lid in ((str(new_key), lease_id), ("10.244.201.0-24", 0)):
        await etcd.put(paths.subnet(key), attrs_for(node(1))(new_key).encode(), lid)
        await etcd.put(paths.owner(key), b"node-1", lid)
    # an owner record in our name left over a subnet another node has taken since
    theirs = await etcd.grant(60)
    await etcd.put(paths.subnet("10.244.202.0-24"), attrs_for(node(2))(None).encode(), theirs)
    await etcd.put(paths.owner("10.244.202.0-24"), b"node-1", lease_id)
    m = manager(etcd, paths, 1, ttl=60)
    got = await m.acquire(cfg, prefer=new_key)
    assert got.key == new_key and m.take_snapshot() is None
    # the agent lists everyone's leases and is ready; then its keepalive sweeps, first thing
    keeping = asyncio.create_task(m.keepalive(cfg))
    try:
        await until(lambda: not m._unlisted, 10, "the keepalive's sweep")
    finally:
        keeping.cancel()
    left = {kv.key for kv in (await etcd.get_prefix(paths.subnets))[0]}
    assert left == {paths.subnet(k) for k in (str(new_key), "10.244.201.0-24",
                                              "10.244.202.0-24")}
    assert paths.subnet(str(old.key)) not in left


async def test_same_public_ip_under_a_flannel_written_lease_is_reused(etcd, paths):
    cfg = await setup_config(etcd, paths)
    lease_id = await etcd.grant(60)
    await etcd.put(paths.subnet("10.244.77.0-24"), attrs_for(node(1))(None).encode(), lease_id)
    got = await manager(etcd, paths, 1, ttl=60).acquire(cfg)
    assert str(got.key) == "10.244.77.0-24" and got.etcd_lease == lease_id


async def test_restart_after_lease_loss_reuses_subnet_env_subnet(etcd, paths):
    cfg = await setup_config(etcd, paths)
    m = manager(etcd, paths, 1, ttl=60)
    first = await m.acquire(cfg)
    await m.release()  # the lease is gone, as after a long outage
    assert not (await etcd.get_prefix(paths.subnets))[0]
    again = await manager(etcd, paths, 1, ttl=60).acquire(cfg, prefer=first.key)
    assert again.key == first.key and again.etcd_lease != first.etcd_lease


async def test_reservation_is_honoured(etcd, paths):
    cfg = await setup_config(etcd, paths, {"Network": "10.0.0.0/28"})  # 3 subnets
    await etcd.put(paths.subnet("10.0.0.8-30"), attrs_for(node(3))(None).encode())  # no lease
    others = [await manager(etcd, paths, i, ttl=60).acquire(cfg) for i in (1, 2)]
    assert {str(lease.key) for lease in others} == {"10.0.0.4-30", "10.0.0.12-30"}
    pinned = await manager(etcd, paths, 3, ttl=60).acquire(cfg)
    assert str(pinned.key) == "10.0.0.8-30" and pinned.reserved
    kv = await etcd.get(paths.subnet("10.0.0.8-30"))
    assert kv.lease == 0  # still pinned, no TTL


async def test_exhaustion_is_a_clear_error(etcd, paths):
    cfg = await setup_config(etcd, paths, {"Network": "10.0.0.0/28"})
    for i in (1, 2, 3):
        await manager(etcd, paths, i, ttl=60).acquire(cfg)
    await etcd.put(paths.subnet("10.0.0.0-24"), b"garbage")  # unparseable values still count
    with pytest.raises(ExhaustedError, match=r"range 10.0.0.4..10.0.0.12 holds 3, 3 taken"):
        await manager(etcd, paths, 4, ttl=60).acquire(cfg)


async def test_preferred_subnet_taken_by_someone_else_is_not_stolen(etcd, paths):
    cfg = await setup_config(etcd, paths)
    other = await manager(etcd, paths, 2, ttl=60).acquire(cfg)
    mine = await manager(etcd, paths, 1, ttl=60).acquire(cfg, prefer=other.key)
    assert mine.key != other.key


async def test_dual_stack_lease(etcd, paths):
    cfg = await setup_config(etcd, paths, {**NET, "EnableIPv6": True,
                                           "IPv6Network": "fd00:10:244::/48"})
    n = NodeInfo("dual", ipa.ip_address("198.51.100.9"), ipa.ip_address("2001:db8:100::9"))
    m = LeaseManager(etcd, paths, n, lambda k: LeaseAttrs(
        n.public_ip, "0e:00:00:00:00:09", 1, n.public_ipv6, "0e:00:00:00:01:09"), ttl=60)
    lease = await m.acquire(cfg)
    assert lease.key.subnet and lease.key.subnet6 and "&" in str(lease.key)
    kv = await etcd.get(paths.subnet(str(lease.key)))
    assert json.loads(kv.value)["BackendV6Data"]["VtepMAC"] == "0e:00:00:00:01:09"


async def test_node_ids_are_small_unique_and_stable(etcd, paths):
    ids = await asyncio.gather(*(node_id(etcd, paths, f"n{i}") for i in range(10)))
    assert sorted(ids) == list(range(1, 11))
    assert await node_id(etcd, paths, "n3") == ids[3]
    # flannel readers never see them: nothing new under subnets/, config untouched
    assert not (await etcd.get_prefix(paths.subnets))[0]


async def test_expired_lease_is_a_removed_event_at_every_watcher(etcd, paths):
    cfg = await setup_config(etcd, paths)
    watchers = [LeaseWatcher(etcd, paths) for _ in range(3)]
    lease = await manager(etcd, paths, 1, ttl=3).acquire(cfg)  # never kept alive
    for w in watchers:
        snap = await w.snapshot()
        assert str(lease.key) in snap.leases

    async def first_event(w):
        async for ev in w.events():
            return ev

    events = await asyncio.wait_for(asyncio.gather(*(first_event(w) for w in watchers)), 15)
    for ev in events:
        assert ev.kind is EventKind.REMOVED and ev.key == str(lease.key) and ev.lease is None


async def test_keepalive_renews_and_recovers_a_revoked_lease(etcd, paths):
    cfg = await setup_config(etcd, paths)
    m = manager(etcd, paths, 1, ttl=3)
    lease = await m.acquire(cfg)
    lost = asyncio.Queue()

    async def on_lost(ev):
        await lost.put(ev)

    task = asyncio.create_task(m.keepalive(cfg, on_lost))
    try:
        await asyncio.sleep(4)  # past the TTL: still held because it was refreshed
        assert m.renewals >= 2
        assert (await etcd.get(paths.subnet(str(lease.key)))).lease == lease.etcd_lease
        await etcd.revoke(lease.etcd_lease)  # someone kills our lease
        m.check_soon()
        ev = await asyncio.wait_for(lost.get(), 10)
        assert ev.new.key == lease.key and ev.reason == "etcd lease expired or revoked"
        assert (await etcd.get(paths.subnet(str(lease.key)))).lease == ev.new.etcd_lease
    finally:
        task.cancel()


FOREIGN = LeaseAttrs(ipa.ip_address("198.51.100.99"), "0e:aa:bb:cc:dd:ee", 1).encode()


async def test_foreign_writes_to_our_key_are_put_back_under_our_etcd_lease(etcd, paths):
    cfg = await setup_config(etcd, paths)
    m = manager(etcd, paths, 1)
    lease = await m.acquire(cfg)
    key = paths.subnet(str(lease.key))
    ours = (lease.attrs.encode(), lease.etcd_lease)

    async def restored() -> bool:
        kv = await etcd.get(key)
        return kv is not None and (kv.value, kv.lease) == ours

    task = asyncio.create_task(m.keepalive(cfg))
    try:
        other = await etcd.grant(60)
        writes = [lambda: etcd.put(key, FOREIGN),  # no etcd lease at all
                  lambda: etcd.put(key, FOREIGN),  # the same again: the old bug's blind spot
                  lambda: etcd.put(key, FOREIGN, other),  # someone else's etcd lease
                  lambda: etcd.put(key, FOREIGN, lease.etcd_lease),  # under the lease we use
                  lambda: etcd.put(key, b"{garbage"),
                  lambda: etcd.delete(key)]
        for n, write in enumerate(writes, 1):
            await write()
            m.check_soon()  # the agent does this on every watch event for its own key
            await until(restored, 10)
            assert m.takeovers == n and m.losses == 0
        assert m.lease.etcd_lease == lease.etcd_lease and m.lease.key == lease.key
    finally:
        task.cancel()


async def test_a_foreign_rewrite_of_our_reservation_is_put_back_as_a_reservation(etcd, paths):
    cfg = await setup_config(etcd, paths)
    n = node(1)
    key = SubnetKey(ipa.ip_network("10.244.7.0/24"))
    await etcd.put(paths.subnet(str(key)), attrs_for(n)(key).encode())  # pinned, no TTL
    m = manager(etcd, paths, 1)
    lease = await m.acquire(cfg)
    assert lease.key == key and lease.reserved
    task = asyncio.create_task(m.keepalive(cfg))
    try:
        await etcd.put(paths.subnet(str(key)), FOREIGN, await etcd.grant(60))
        m.check_soon()

        async def restored() -> bool:
            kv = await etcd.get(paths.subnet(str(key)))
            return kv.value == lease.attrs.encode() and kv.lease == 0

        await until(restored, 10)
        assert m.takeovers == 1
    finally:
        task.cancel()


async def test_node_id_allocation_gives_each_node_the_subnet_its_id_names(etcd, paths):
    from vxnet.errors import SubnetTaken
    from vxnet.store.allocator import node_subnet

    cfg = await setup_config(etcd, paths, {**NET, "SubnetAllocation": "node-id"})
    assert cfg.subnet_allocation == "node-id"

    async def fixed_manager(i: int):
        nid = await node_id(etcd, paths, node(i).name)
        return LeaseManager(etcd, paths, node(i), attrs_for(node(i)),
                            fixed=SubnetKey(node_subnet(cfg.ipv4, nid)))

    leases = [await (await fixed_manager(i)).acquire(cfg) for i in (1, 2, 3)]
    assert [str(x.key) for x in leases] == ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"]
    again = await (await fixed_manager(2)).acquire(cfg)  # a restart
    assert again.key == leases[1].key and again.etcd_lease == leases[1].etcd_lease
    await etcd.revoke(leases[2].etcd_lease)  # a lost lease comes back on the same subnet
    assert str((await (await fixed_manager(3)).acquire(cfg)).key) == "10.244.3.0-24"
    # node 4's subnet already holds a flanneld-written lease: a clear error, nothing stolen
    flannel = LeaseAttrs(ipa.ip_address("198.51.100.99"), "0e:aa:bb:cc:dd:ee", 1).encode()
    await etcd.put(paths.subnet("10.244.4.0-24"), flannel)
    with pytest.raises(SubnetTaken, match=r"lease 10.244.4.0-24 holds it \(node: no vxnet"):
        await (await fixed_manager(4)).acquire(cfg)
    assert (await etcd.get(paths.subnet("10.244.4.0-24"))).value == flannel


async def test_a_node_switching_to_node_id_allocation_gives_up_its_old_subnet(etcd, paths):
    from vxnet.store.allocator import node_subnet

    cfg = await setup_config(etcd, paths)
    old = await manager(etcd, paths, 1).acquire(cfg, prefer=SubnetKey(
        ipa.ip_network("10.244.77.0/24")))
    assert str(old.key) == "10.244.77.0-24"
    cfg = await setup_config(etcd, paths, {**NET, "SubnetAllocation": "node-id"})
    nid = await node_id(etcd, paths, node(1).name)
    m = LeaseManager(etcd, paths, node(1), attrs_for(node(1)),
                     fixed=SubnetKey(node_subnet(cfg.ipv4, nid)))
    assert str((await m.acquire(cfg)).key) == "10.244.1.0-24"
    assert await etcd.get(paths.subnet("10.244.77.0-24")) is None
