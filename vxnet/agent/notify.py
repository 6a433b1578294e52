"""systemd's readiness protocol, as flanneld speaks it: READY=1 once subnet.env is written and
the first sync is in the kernel, STATUS= lines saying what the agent is doing, and WATCHDOG=1
from the main loop while it turns (when the unit sets WatchdogSec=). A datagram to
$NOTIFY_SOCKET; nothing at all without it. A failing send is logged, never fatal."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        ours = env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog = int(usec) / 1e6 if usec.isdigit() and ours else 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg, self.address)
            self._failed = False
        except OSError as e:
            if not self._failed:
                log.warning("systemd notification to %s failed: %s", self.address, e)
            self._failed = True

    async def run(self, status: Callable[[], str]) -> None:
        """STATUS= whenever it changes, and WATCHDOG=1 at half the watchdog interval, from
        the main loop: if the loop stops turning, systemd notices."""
        if not self.address:
            return
        last = None
        every = min(1.0, self.watchdog / 2) if self.watchdog else 1.0
        while True:
            now = status()
            if now != last:
                self.send(STATUS=now)
                last = now
            if self.watchdog:
                self.send(WATCHDOG="1")
            await asyncio.sleep(every)
