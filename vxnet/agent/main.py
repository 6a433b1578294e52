"""The agent's process: its state, API and systemd notifications wired around start-up and the
runtime, until SIGTERM/SIGINT. `vxnet agent` parses the command line and calls run()."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from vxnet.agent.http import ApiServer
from vxnet.agent.metrics import AgentMetrics
from vxnet.agent.notify import Notifier
from vxnet.agent.options import AgentOptions
from vxnet.agent.startup import start
from vxnet.agent.state import AgentState, Startup
from vxnet.agent.supervisor import cancel
from vxnet.errors import VxnetError

log = logging.getLogger("vxnet")
T = TypeVar("T")


async def run(opts: AgentOptions) -> None:
    """Run the agent with these options until SIGTERM/SIGINT, cancelled, or a configuration
    error (VxnetError)."""
    startup = Startup(opts.node_name)
    state = AgentState(startup)
    notifier = Notifier()
    notifying = asyncio.create_task(notifier.run(lambda: state.source.status_line()))
    metrics = AgentMetrics(state)
    api = ApiServer(state, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly; kernel state and lease stay
        loop.add_signal_handler(sig, stop.set)
    if opts.healthz_port:
        host, port = opts.healthz_ip, opts.healthz_port
        try:
            await api.start(host, port)
        except OSError as e:
            raise VxnetError(f"--healthz-port: cannot listen on {host}:{port}: "
                             f"{e.strerror}") from None
    try:
        with contextlib.suppress(asyncio.CancelledError):  # cancelled, not signalled: a stop too
            runtime = await _until(stop, start(opts, startup, metrics))
            if runtime is not None:
                state.running(runtime)
                notifier.send(READY="1", STATUS=runtime.status_line())  # subnet.env, 1st sync
                try:
                    await _until(stop, runtime.run())
                finally:
                    await runtime.close()
        log.info("stopping; kernel state and lease are left in place")
        notifier.send(STOPPING="1")
    finally:
        notifying.cancel()
        await api.close()


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work` until it ends (its result, or what it raised) or `stop` is set (None: it is
    cancelled, within a deadline, with the cancel sent again should it be lost on the way)."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            await cancel({task})
    if stop.is_set() and (not task.done() or task.cancelled()):
        return None
    return task.result()
