"""Waiting on a condition with a deadline: how tests synchronise, instead of fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

# A deadline for what should happen at once (a repair, a route, a watch event): an upper bound
# for a busy 2-core CI machine, not a claim about speed (benchmarks measure that). Waits return
# as soon as the condition holds, so a generous deadline costs nothing when things work.
SOON = 10.0  # seconds


def wait_for(pred: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
    """Poll `pred` until it is truthy (its value is returned) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not true after {timeout}s")
        time.sleep(0.02)  # the poll interval; the deadline above bounds the wait


async def until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """The same from a coroutine, letting the event loop run between polls; `pred` may be a
    coroutine function."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not true after {timeout}s")
        await asyncio.sleep(0.005)  # the poll interval; the deadline above bounds it
