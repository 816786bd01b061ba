"""The timeline picture: requests in flight per upstream, as each simulator saw them.

One row per scenario, one column per strategy; each panel steps through the number of
requests running at the upstream (from the simulator's own spans), with its real limit
dashed and every refused request (429) ticked in red, so over-limit bursts and idle
capacity show at a glance. Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from livia.bench.results import Result
from livia.bench.strategies import STRATEGY_NAMES
from livia.bench.upstreams import UpstreamMeasure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger("livia.bench")

#: Colours per upstream, in the order scenarios list them.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def in_flight(measure: UpstreamMeasure) -> tuple[list[float], list[int]]:
    """(times, requests running from that time on), from the spans that ran."""
    changes: list[tuple[float, int]] = []
    for span in measure.spans:
        if span.ran:
            changes.append((span.start, 1))
            changes.append((span.end, -1))
    changes.sort(key=lambda c: (c[0], c[1]))
    times, levels, level = [0.0], [0], 0
    for t, step in changes:
        level += step
        times.append(t)
        levels.append(level)
    return times, levels


def plot_timelines(results: Sequence[Result], path: str | Path) -> Path:
    """Write the PNG to `path` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in results))
    strategies = [s for s in STRATEGY_NAMES if any(r.strategy == s for r in results)]
    rows, cols = len(scenarios), len(strategies)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.9 * cols, 1.9 * rows + 0.6),
        squeeze=False,
        sharex="row",  # one time axis per scenario: strategies compare at a glance
    )
    # Fixed margins: constrained layout takes seconds with forty panels.
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.3 / rows, top=1 - 0.5 / rows, hspace=0.35)
    by_cell = {(r.scenario, r.strategy): r for r in results}
    for i, scenario in enumerate(scenarios):
        for j, strategy in enumerate(strategies):
            ax = axes[i][j]
            result = by_cell.get((scenario, strategy))
            if i == 0:
                ax.set_title(strategy, fontsize=10, fontweight="bold")
            if j == 0:
                ax.set_ylabel(f"{scenario}\nin flight", fontsize=9)
            if i == rows - 1:
                ax.set_xlabel("seconds", fontsize=8)
            if result is None or not result.upstreams:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
                ax.set_yticks([])
                continue
            _panel(ax, result)
    fig.suptitle(
        "Requests in flight per upstream, as the simulator counted them "
        "(dashed: the real limit; red ticks: refused with 429)",
        fontsize=11,
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    plt.close(fig)
    log.debug("timeline written to %s", target)
    return target


def _panel(ax: Axes, result: Result) -> None:
    """One strategy's timeline for one scenario."""
    top = 1
    for k, measure in enumerate(result.upstreams):
        colour = COLOURS[k % len(COLOURS)]
        times, levels = in_flight(measure)
        ax.step(times, levels, where="post", color=colour, linewidth=1.1, label=measure.api)
        ax.axhline(measure.limit, color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
        refused = [s.start for s in measure.spans if not s.ran]
        if refused:
            ax.plot(refused, [measure.limit + 0.5] * len(refused), "|", color="red", markersize=7)
        top = max(top, measure.limit, max(levels, default=0))
    ax.set_ylim(0, top + 1.5)
    ax.tick_params(labelsize=7)
    ax.text(
        0.99,
        0.95,
        f"{result.makespan_s:.2f} s · eff {result.efficiency:.2f} · 429s {result.http_429}",
        ha="right",
        va="top",
        fontsize=7,
        transform=ax.transAxes,
    )
    if len(result.upstreams) > 1:
        ax.legend(fontsize=6, loc="lower left")
