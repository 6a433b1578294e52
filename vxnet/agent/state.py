"""The small object the HTTP API and the metrics read: how far start-up got (and what it waits
for), and the runtime once it exists."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vxnet.agent.runtime import Runtime


@dataclass(eq=False)
class AgentState:
    node_name: str
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"  # what start-up is doing or waiting for; "running" after
    runtime: Runtime | None = None

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.runtime.not_ready is None

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what start-up does, or what the node holds."""
        rt = self.runtime
        if rt is None:
            return self.phase
        if rt.not_ready:
            return f"not ready: {rt.not_ready}"
        peers = sum(len(ov.plane.peers) for ov in rt.overlays.values())
        return f"ready: lease {rt.lease.key}, {peers} peers"

    @property
    def not_ready_reason(self) -> str:
        if self.runtime is None:
            return self.phase
        return self.runtime.not_ready or ""
