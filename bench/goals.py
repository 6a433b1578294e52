"""Issue 21's performance goals, printed beside the figures a benchmark measured: one table per
run, each goal marked met or not met. A benchmark calls `check` for each figure it has and
`report` at the end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Goal:
    figure: str
    limit: float  # the figure must be at most this
    unit: str


GOALS = {
    "kernel path / ip -batch, 1 000": Goal("kernel path vs ip + bridge -batch (nhid), 1 000 "
                                           "peers", 0.7, "x"),
    "kernel path / ip -batch, 5 000": Goal("kernel path vs ip + bridge -batch (nhid), 5 000 "
                                           "peers", 0.7, "x"),
    "kernel path / ip -batch, 20 000": Goal("kernel path vs ip + bridge -batch (nhid), 20 000 "
                                            "peers", 0.7, "x"),
    "no-op resync, 5 000": Goal("no-op resync at 5 000 peers (median)", 30, "ms"),
    "peak RSS, 1 000": Goal("agent peak RSS at 1 000 peers", 40, "MiB"),
    "peak RSS, 5 000": Goal("agent peak RSS at 5 000 peers", 50, "MiB"),
    "peak RSS, 20 000": Goal("agent peak RSS at 20 000 peers", 80, "MiB"),
    "start -> ready, 5 000": Goal("agent start -> ready at 5 000 peers (median)", 600, "ms"),
    "start -> ready, 20 000": Goal("agent start -> ready at 20 000 peers (median)", 1500,
                                   "ms"),
    "own part p99": Goal("agent's own part of an event under 100 changes/s, p99 (bucket "
                         "bound)", 1, "ms"),
    "event latency p99, quiet": Goal("event latency, quiet, 5 000 peers, p99 (no worse than "
                                     "before: 4.4 ms)", 4.4, "ms"),
}

_measured: list[tuple[Goal, float]] = []


def size(n: int) -> str:
    """n as the goals name it: 5 000."""
    return f"{n:,}".replace(",", " ")


def check(name: str, value: float) -> None:
    """A measured figure for the goal `name` (one of GOALS)."""
    _measured.append((GOALS[name], value))


def report() -> None:
    if not _measured:
        return
    print("\n| goal | measured | limit | |\n| --- | --- | --- | --- |")
    for goal, value in _measured:
        shown = f"{value:.2f}" if goal.unit == "x" else f"{value:.0f}" if value >= 10 \
            else f"{value:.2f}"
        print(f"| {goal.figure} | {shown} {goal.unit} | <= {goal.limit:g} {goal.unit} | "
              f"{'met' if value <= goal.limit else 'NOT MET'} |")
