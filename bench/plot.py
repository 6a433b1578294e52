"""PNG plots for docs/benchmarks.md (matplotlib, the `bench` extra: `pip install '.[bench]'`).
Imported only when a benchmark is given --plot, so the benchmarks run without it."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

Series = dict[str, Sequence[tuple[float, float]]]


def save(path: str, title: str, xlabel: str, panels: Sequence[tuple[str, Series]], *,
         logx: bool = False, logy: bool = False) -> None:
    """One figure, one panel per (y label, {series name: [(x, y)]}), side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for name, points in series.items():
            xs, ys = zip(*points, strict=True) if points else ((), ())
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(textwrap.fill(title, 50 * len(panels)))  # a one-panel figure is narrow
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
