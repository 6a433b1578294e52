"""The agent's process: its state, API and systemd notifications wired around start-up and the
runtime, until SIGTERM/SIGINT. `vxnet agent` parses the command line and calls run()."""

from __future__ import annotations

import asyncio
import logging
import signal

from vxnet.agent.http import ApiServer
from vxnet.agent.metrics import AgentMetrics
from vxnet.agent.notify import Notifier
from vxnet.agent.options import AgentOptions
from vxnet.agent.startup import start
from vxnet.agent.state import AgentState
from vxnet.errors import VxnetError


async def run(opts: AgentOptions) -> None:
    """Run the agent with these options until cancelled or a configuration error (VxnetError)."""
    state = AgentState(opts.node_name)
    notifier = Notifier()
    notifying = asyncio.create_task(notifier.run(state.status_line))
    metrics = AgentMetrics(state)
    api = ApiServer(state, metrics)
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly; kernel state and lease stay
        loop.add_signal_handler(sig, main_task.cancel)  # type: ignore[union-attr]
    if opts.healthz_port:
        host, port = opts.healthz_ip, opts.healthz_port
        try:
            await api.start(host, port)
        except OSError as e:
            raise VxnetError(f"--healthz-port: cannot listen on {host}:{port}: "
                             f"{e.strerror}") from None
    try:
        state.runtime = await start(opts, state, metrics)
        state.phase = "running"
        notifier.send(READY="1", STATUS=state.status_line())  # subnet.env and first sync done
        await state.runtime.run()
    except asyncio.CancelledError:
        logging.getLogger("vxnet").info("stopping; kernel state and lease are left in place")
        notifier.send(STOPPING="1")
    finally:
        notifying.cancel()
        await api.close()
