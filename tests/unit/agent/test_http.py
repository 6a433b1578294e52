"""The HTTP API answers from a thread of its own: probes are not kept waiting by a busy main
loop, yet a main loop that stopped turning fails /healthz."""

import asyncio
import json
import time

from vxnet.agent.http import ApiServer
from vxnet.agent.metrics import AgentMetrics
from vxnet.agent.state import AgentState, Startup
from vxnet.lab.etcd import free_port


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_probes_answer_while_the_main_loop_is_busy_and_fail_when_it_stalls():
    state = AgentState(Startup("n1", phase="reading the network config: etcd unreachable"))
    api = ApiServer(state, AgentMetrics(state))
    port = free_port()
    await api.start("127.0.0.1", port)
    try:
        assert await get(port, "/healthz") == (200, "ok\n")
        assert await get(port, "/readyz") == (
            503, "not ready: reading the network config: etcd unreachable\n")
        code, body = await get(port, "/v1/ipam")  # computed in the main loop
        assert code == 200 and json.loads(body) == {"nodeName": "n1", "nodeId": None,
                                                    "ready": False}
        # the main loop busy for 0.5 s: a probe from another thread is answered meanwhile
        loop = asyncio.get_running_loop()
        probe = loop.run_in_executor(None, lambda: asyncio.run(get(port, "/healthz")))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            pass
        assert (await probe)[0] == 200
        api._heart.cancel()
        api.beat = time.monotonic() - 60  # no heartbeat for a minute: stuck
        code, body = await get(port, "/healthz")
        assert code == 503 and "stalled" in body
    finally:
        await api.close()
