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
from vxnet.agent.state import AgentState, Startup
from vxnet.errors import VxnetError


async def run(opts: AgentOptions) -> None:
    """Run the agent with these options until cancelled or a configuration error (VxnetError)."""
    startup = Startup(opts.node_name)
    state = AgentState(startup)
    notifier = Notifier()
    notifying = asyncio.create_task(notifier.run(lambda: state.source.status_line()))
    metrics = AgentMetrics(state)
    api = ApiServer(state, metrics)
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:  # stop cleanly on a signal; kernel state and lease stay
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, main_task.cancel)
    if opts.healthz_port:
        host, port = opts.healthz_ip, opts.healthz_port
        try:
            await api.start(host, port)
        except OSError as e:
            raise VxnetError(f"--healthz-port: cannot listen on {host}:{port}: "
                             f"{e.strerror}") from None
    try:
        runtime = await start(opts, startup, metrics)
        state.running(runtime)
        notifier.send(READY="1", STATUS=runtime.status_line())  # subnet.env, first sync done
        await runtime.run()
    except asyncio.CancelledError:
        logging.getLogger("vxnet").info("stopping; kernel state and lease are left in place")
        notifier.send(STOPPING="1")
    finally:
        notifying.cancel()
        await api.close()
