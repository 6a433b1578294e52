"""What the HTTP API, the metrics and systemd read: one source at a time -- start-up (how far it
got, what it waits for) until the runtime exists, then the runtime. Each component reports a
small typed status; a source only assembles them, and the views only render."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vxnet.agent.node import NodeStatus
from vxnet.agent.supervisor import TaskStatus
from vxnet.health.checker import HealthStatus
from vxnet.kernel.allowlist import AllowStatus
from vxnet.kernel.dataplane import PlaneDetail, PlaneStatus
from vxnet.kernel.forward import ForwardStatus
from vxnet.kernel.monitor import MonitorStatus
from vxnet.kernel.overlay import OverlayStatus
from vxnet.kernel.reconciler import ReconcilerStatus
from vxnet.store.store import StoreStatus


@dataclass(frozen=True, slots=True)
class FamilyStatus:
    """One overlay family: its device and its peer state."""

    device: OverlayStatus
    plane: PlaneStatus
    detail: PlaneDetail | None  # per peer; only for views that show it


@dataclass(frozen=True, slots=True)
class RunningStatus:
    node: NodeStatus
    store: StoreStatus
    overlays: dict[int, FamilyStatus]  # by IP version
    invalid_leases: Mapping[str, str]  # lease key -> why it could not be read
    invalid_total: int
    allow: AllowStatus | None  # the VXLAN allow-list, when on
    masquerade_repairs: int
    forward: ForwardStatus | None  # the FORWARD accept rules, when on
    reconciler: ReconcilerStatus
    monitor: MonitorStatus
    tasks: TaskStatus
    health: HealthStatus | None  # peer probes, when on
    first_sync_writes: int
    loop_lag_max: float  # the longest the event loop was held, in seconds


@dataclass(frozen=True, slots=True)
class AgentStatus:
    node_name: str
    ready: bool
    phase: str  # what start-up does or waits for; "running" after
    not_ready: str  # why not ready ("" when ready)
    running: RunningStatus | None  # None until start-up is done


class Source(Protocol):
    """Whoever can say how the agent is: start-up, then the runtime."""

    @property
    def ready(self) -> bool: ...

    @property
    def not_ready_reason(self) -> str: ...

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        ...

    def status(self, detail: bool = False) -> AgentStatus:
        """detail: with per-peer state (costly at thousands of peers; /v1/state only)."""
        ...


@dataclass(eq=False)
class Startup:
    """The source while start-up runs: its phase, and what it waits for."""

    node_name: str
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"

    @property
    def ready(self) -> bool:
        return False

    @property
    def not_ready_reason(self) -> str:
        return self.phase

    def status_line(self) -> str:
        return self.phase

    def status(self, detail: bool = False) -> AgentStatus:
        return AgentStatus(self.node_name, False, self.phase, self.phase, None)


class AgentState:
    """The one the API and the metrics hold: it answers from the current source."""

    def __init__(self, startup: Startup) -> None:
        self.startup = startup
        self.source: Source = startup

    def running(self, source: Source) -> None:
        """Start-up is done: from now on the runtime answers."""
        self.startup.phase = "running"
        self.source = source
