"""Long-running tasks that never take the agent down: each is logged, counted, backed off and
restarted when it fails or returns. Only a configuration error gets through (and ends the
process), as the operator contract says."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from vxnet.backoff import Backoff
from vxnet.errors import ConfigError

log = logging.getLogger(__name__)

Factory = Callable[[], Awaitable[None]]
HEALTHY_AFTER = 60.0  # a task that ran this long before failing starts its backoff afresh
STOP_WITHIN = 5.0  # a stop waits this long for tasks to end, then names those that did not
RECANCEL_EVERY = 0.5


async def cancel(tasks: Collection[asyncio.Task[Any]], within: float = STOP_WITHIN
                 ) -> set[asyncio.Task[Any]]:
    """Cancel the tasks and wait, for `within` seconds at most, until they end; return those
    that did not. The cancel is sent again while a task runs on: one can be lost on the way
    (Python 3.11's wait_for returns the inner result when both arrive together), and a task
    that lost it would otherwise keep the process from stopping for ever."""
    pending = {t for t in tasks if not t.done()}
    end = time.monotonic() + within
    while pending and (left := end - time.monotonic()) > 0:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY, left))
    for t in pending:
        log.error("task %s did not stop within %.0f s; leaving it, awaiting:%s", t.get_name(),
                  within, _awaiting(t))
    return pending


def _awaiting(task: asyncio.Task[Any]) -> str:
    """Where a task waits: the chain of coroutines it awaits (Task.get_stack shows only the
    outermost one)."""
    lines: list[str] = []
    c: Any = task.get_coro()
    while (frame := getattr(c, "cr_frame", None) or getattr(c, "ag_frame", None)) is not None:
        lines.append(f"\n  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        c = getattr(c, "cr_await", None) or getattr(c, "ag_await", None)
    return "".join(lines) or f" {c!r}"


@dataclass(frozen=True, slots=True)
class TaskStatus:
    restarts: dict[str, int]  # every task, restarts since start (0 for those never restarted)
    last_error: dict[str, str]  # why each restarted task last stopped


class Supervisor:
    def __init__(self, max_backoff: float = 30.0) -> None:
        self.max_backoff = max_backoff
        self.restarts: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def status(self) -> TaskStatus:
        return TaskStatus(dict(self.restarts), dict(self.last_error))

    def start(self, name: str, factory: Factory) -> None:
        self.restarts[name] += 0  # every task shows in the metric, at 0 until it restarts
        self._tasks.append(asyncio.create_task(self._keep(name, factory), name=name))

    async def _keep(self, name: str, factory: Factory) -> None:
        backoff = Backoff(0.5, self.max_backoff)
        while True:
            t0 = time.monotonic()
            try:
                await factory()
                why = "returned"
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being stopped
                why = "was cancelled by something it awaited"  # a library's doing: restart
            except ConfigError:
                raise
            except Exception as e:  # a bug or an unforeseen error: log it, never exit for it
                why = f"failed: {type(e).__name__}: {e}"
                log.debug("task %s", name, exc_info=True)
            if time.monotonic() - t0 > HEALTHY_AFTER:
                backoff.reset()
            delay = backoff.next_delay()
            self.restarts[name] += 1
            self.last_error[name] = why
            log.error("task %s %s; restarting in %.1fs", name, why, delay)
            await asyncio.sleep(delay)

    async def wait(self) -> None:
        """Until cancelled, or until a task raises what may end the process."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()

    async def stop(self) -> None:
        await cancel(self._tasks)
