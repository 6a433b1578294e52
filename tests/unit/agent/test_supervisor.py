"""After start-up nothing but a configuration error ends the agent (issue 10): the supervisor,
start-up's waiting, and the keepers that used to let OSError through."""

import asyncio
import contextlib
import gc

import pytest

from tests.waiting import SOON, until
from vxnet.agent.options import AgentOptions
from vxnet.agent.startup import start, wait_for
from vxnet.agent.state import Startup
from vxnet.agent.supervisor import Supervisor, cancel
from vxnet.errors import ConfigError, ExhaustedError, StoreUnavailable
from vxnet.kernel.device import DeviceError
from vxnet.lab.etcd import free_port


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    real_sleep = asyncio.sleep

    async def short(delay, result=None):
        return await real_sleep(min(delay, 0.01), result)
    monkeypatch.setattr("vxnet.agent.supervisor.asyncio.sleep", short)
    monkeypatch.setattr("vxnet.agent.startup.asyncio.sleep", short)


async def test_failing_and_returning_tasks_are_restarted_and_counted():
    runs = {"keepalive": 0, "watch": 0}

    async def keepalive():  # what the lease keepalive raised when re-acquiring in a full pool
        runs["keepalive"] += 1
        if runs["keepalive"] < 3:
            raise ExhaustedError("no free subnet")
        await asyncio.Event().wait()

    async def watch():  # a lease move that failed to recreate the device
        runs["watch"] += 1
        if runs["watch"] < 4:
            raise DeviceError("cannot create VXLAN device flannel.1")

    sup = Supervisor()
    sup.start("keepalive", keepalive)
    sup.start("watch", watch)
    waiting = asyncio.create_task(sup.wait())
    await until(lambda: sup.restarts["keepalive"] == 2 and sup.restarts["watch"] >= 4, SOON,
                "both restarted until they stopped failing")
    assert sup.last_error["keepalive"] == "failed: ExhaustedError: no free subnet"
    assert sup.last_error["watch"] == "returned"  # a loop that ends is restarted too
    assert not waiting.done()  # still running: nothing ended the agent
    waiting.cancel()
    await sup.stop()


async def test_only_a_configuration_error_gets_through():
    async def bad():
        raise ConfigError("Network", "changed under us to something invalid")

    sup = Supervisor()
    sup.start("config", bad)
    with pytest.raises(ConfigError):
        await asyncio.wait_for(sup.wait(), SOON)
    await sup.stop()


async def test_start_up_waits_for_a_free_subnet():
    calls = 0

    async def acquire():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ExhaustedError("no free subnet left in 10.244.0.0/16")
        return "lease"

    state = Startup("n1")
    got = await wait_for(state, "acquiring a subnet lease", acquire,
                         (StoreUnavailable, ExhaustedError))
    assert got == "lease" and calls == 3


async def test_the_cyclic_gc_runs_while_start_up_waits_for_etcd():
    state = Startup("n1")
    opts = AgentOptions(etcd_endpoints=f"http://127.0.0.1:{free_port()}", etcd_timeout=0.2,
                        node_name="n1")
    task = asyncio.create_task(start(opts, state, observer=None))
    try:
        await until(lambda: "reading the network config:" in state.phase, SOON,
                    "start-up saying it waits for etcd, and why")
        assert gc.isenabled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_masquerade_keeper_survives_nft_failing_to_run(monkeypatch):
    import ipaddress

    from vxnet.kernel.masq import MasqRules, Masquerade

    tries = 0

    async def no_nft(*a, **kw):
        nonlocal tries
        tries += 1
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("vxnet.kernel.nft.asyncio.create_subprocess_exec", no_nft)
    m = Masquerade([MasqRules(ipaddress.ip_network("10.244.0.0/16"),
                              ipaddress.ip_network("10.244.1.0/24"))])
    keeper = asyncio.create_task(m.keep(0.01))
    await until(lambda: tries >= 3 or keeper.done(), SOON, "nft failing, again and again")
    assert not keeper.done()  # it logged and keeps trying
    keeper.cancel()


async def test_a_task_cancelled_by_what_it_awaited_is_restarted_not_lost():
    """gRPC cancels the calls of a channel another task closed: the task awaiting one gets a
    CancelledError that is not a stop. It used to end the watch task silently."""
    runs = 0

    async def watch():
        nonlocal runs
        runs += 1
        if runs == 1:
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.cancel)  # someone else's doing
            await fut
        await asyncio.Event().wait()

    sup = Supervisor()
    sup.start("watch", watch)
    await until(lambda: runs == 2, SOON, "the watch started again")
    assert runs == 2 and sup.restarts["watch"] == 1
    assert "cancelled by something it awaited" in sup.last_error["watch"]
    await sup.stop()  # and a real stop still stops


async def test_an_etcd_call_cancelled_under_it_is_unavailable_not_a_cancellation():
    from vxnet.store.etcd import Etcd

    etcd = Etcd("http://127.0.0.1:1", timeout=0.5)

    async def closed_under_us(client):
        raise asyncio.CancelledError  # what a call on a channel closed by failover raises

    with pytest.raises(StoreUnavailable, match="connection closed under the request"):
        await etcd.call(closed_under_us)
    await etcd.close()


async def test_a_stop_sends_a_lost_cancel_again_and_names_a_task_that_never_ends(caplog):
    """Python 3.11's wait_for can lose a cancel that arrives as its inner call completes; the
    task then runs on, and a stop that only waited for it never ended (the agent outlived
    SIGTERM). A stop cancels again, and after its deadline names what is left and returns."""
    lost, deaf = 0, True
    waiting = asyncio.Event()  # set once a task is at its first await

    async def loses_one():
        nonlocal lost
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            lost += 1  # swallowed, as wait_for may
        await asyncio.Event().wait()

    async def never_ends():
        while deaf:
            with contextlib.suppress(asyncio.CancelledError):
                waiting.set()
                await asyncio.Event().wait()

    sup = Supervisor()
    sup.start("watch", loses_one)
    await waiting.wait()
    assert await cancel(sup._tasks, within=5) == set() and lost == 1

    waiting.clear()
    stuck = asyncio.create_task(never_ends(), name="stuck")
    await waiting.wait()
    try:
        assert await cancel({stuck}, within=0.3) == {stuck}
        assert "task stuck did not stop within 0 s" in caplog.text
        assert "never_ends" in caplog.text and "locks.py" in caplog.text  # where it waits
    finally:  # a failed assertion must not leave a task no teardown can end
        deaf = False
    assert await cancel({stuck}) == set()
