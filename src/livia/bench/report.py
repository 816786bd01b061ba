"""What a person reads: the machine, the results table, the JSON document, live progress."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from livia.bench.results import Result
from livia.bench.runner import Job
from livia.bench.scenarios import Scenario
from livia.bench.strategies import LIVIA

#: Efficiency at or above which a row is within the target (5 % of the bound).
TARGET = 0.95


def machine_info() -> dict[str, Any]:
    """The machine the figures come from: cores, CPU model, Python, load."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": load,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def document(
    results: Sequence[Result], scenarios: Sequence[Scenario], machine: dict[str, Any]
) -> dict[str, Any]:
    """The `--json` document: the machine, one row per (scenario, strategy), descriptions."""
    return {
        "machine": machine,
        "scenarios": [r.to_json() for r in results],
        "descriptions": {
            s.name: {"title": s.title, "expect": s.expect, "limits": s.describe_limits()}
            for s in scenarios
        },
    }


def _seconds(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def _peak(result: Result) -> str:
    """The peak in flight: a number, or one per upstream when there are several."""
    peaks = result.peak_concurrency
    if len(peaks) == 1:
        return str(next(iter(peaks.values())))
    return ", ".join(f"{api} {peak}" for api, peak in peaks.items()) or "-"


def _efficiency(result: Result) -> Text:
    value = result.efficiency
    if math.isnan(value):
        return Text("-")
    style = "green" if value >= TARGET else "yellow" if value >= 0.8 else "red"
    mark = "*" if result.against_ideal else ""
    return Text(f"{value:.3f}{mark}", style=style if result.strategy == LIVIA else f"dim {style}")


#: Every column of the table: (name, justified right, wraps).
COLUMNS: tuple[tuple[str, bool, bool], ...] = (
    ("scenario", False, False),
    ("strategy", False, False),
    ("calls", True, False),
    ("limit", False, True),
    ("bound s", True, False),
    ("ideal s", True, False),
    ("measured s", True, False),
    ("eff.", True, False),
    ("peak", True, False),
    ("over-limit", True, False),
    ("429s", True, False),
    ("p50 s", True, False),
    ("p95 s", True, False),
    ("speedup", True, False),
    ("notes", False, True),
)
#: Narrower sets of columns, widest first, for terminals that cannot show them all
#: (`--wide` shows every column whatever the width); the first that fits is used.
COLUMN_SETS: tuple[tuple[str, ...], ...] = (
    tuple(name for name, _, _ in COLUMNS),
    (
        "scenario",
        "strategy",
        "calls",
        "bound s",
        "ideal s",
        "measured s",
        "eff.",
        "peak",
        "over-limit",
        "429s",
        "p50 s",
        "p95 s",
        "speedup",
    ),
    ("scenario", "strategy", "bound s", "measured s", "eff.", "over-limit", "429s", "p95 s"),
)
#: Shorter names for the narrowest table (the legend says what they stand for).
SHORT_STRATEGIES = {
    "semaphore+tenacity": "sem+ten",
    "semaphore+aiolimiter+tenacity": "sem+lim+ten",
}
SHORT_HEADERS = {"bound s": "bound", "measured s": "took", "over-limit": "over", "p95 s": "p95"}


def table(
    results: Sequence[Result],
    scenarios: Sequence[Scenario],
    *,
    width: int | None = None,
    wide: bool = False,
) -> Table:
    """The results, one section per scenario; Livia's rows first and in bold.

    With `width` (the terminal's columns) and not `wide`, the widest set of columns that
    fits without squeezing a figure is chosen, like `livia stats` does.
    """
    if wide or width is None:
        return _table(results, scenarios, COLUMN_SETS[0], short=False)
    for columns in COLUMN_SETS:
        candidate = _table(results, scenarios, columns, short=False)
        if _fits(candidate, width):
            return candidate
    return _table(results, scenarios, COLUMN_SETS[-1], short=True)


def _fits(table: Table, width: int) -> bool:
    """Whether `table` fits in `width` columns with every unwrappable cell whole."""
    import io

    measuring = Console(file=io.StringIO(), width=10_000)
    return measuring.measure(table).minimum <= width


def _table(
    results: Sequence[Result], scenarios: Sequence[Scenario], columns: Sequence[str], *, short: bool
) -> Table:
    out = Table(title="livia bench", title_style="bold", header_style="bold", expand=False)
    spec = {name: (right, wraps) for name, right, wraps in COLUMNS}
    for name in columns:
        right, wraps = spec[name]
        out.add_column(
            SHORT_HEADERS.get(name, name) if short else name,
            justify="right" if right else "left",
            no_wrap=not wraps,
            overflow="fold",
            min_width=12 if wraps else None,
        )
    limits = {s.name: s.describe_limits() for s in scenarios}
    first = True
    for scenario in dict.fromkeys(r.scenario for r in results):
        if not first:
            out.add_section()
        first = False
        rows = [r for r in results if r.scenario == scenario]
        for i, r in enumerate(rows):
            strategy = SHORT_STRATEGIES.get(r.strategy, r.strategy) if short else r.strategy
            cells: dict[str, Any] = {
                "scenario": scenario if i == 0 else "",
                "strategy": Text(strategy, style="bold" if r.strategy == LIVIA else ""),
                "calls": str(r.calls),
                "limit": limits.get(scenario, r.limits) if i == 0 else "",
                "bound s": _seconds(r.bound_s),
                "ideal s": _seconds(r.ideal_s),
                "measured s": _seconds(r.makespan_s),
                "eff.": _efficiency(r),
                "peak": _peak(r),
                "over-limit": Text(str(r.over_limit), style="red" if r.over_limit else ""),
                "429s": str(r.http_429),
                "p50 s": _seconds(r.p50_s),
                "p95 s": _seconds(r.p95_s),
                "speedup": f"{r.speedup:.1f}x" if r.speedup is not None else "-",
                "notes": r.notes,
            }
            out.add_row(*(cells[name] for name in columns))
    if len(columns) < len(COLUMNS):
        hidden = [name for name, _, _ in COLUMNS if name not in columns]
        out.caption = f"not shown at this width: {', '.join(hidden)} (--wide shows them)"
        if short:
            out.caption += "; " + ", ".join(f"{v} = {k}" for k, v in SHORT_STRATEGIES.items())
        out.caption_justify = "left"
    return out


def markdown(results: Sequence[Result], machine: dict[str, Any]) -> str:
    """The results table as Markdown (for docs/bench.md), with the machine and command."""
    head = (
        "| scenario | strategy | calls | limit | bound s | ideal s | measured s | eff. | peak | "
        "over-limit | 429s | p50 s | p95 s | speedup | notes |"
    )
    lines = [
        f"Machine: {machine.get('nproc')} cores ({machine.get('cpu_model')}), "
        f"Python {machine.get('python')}, {machine.get('platform')}, load average at start "
        f"{' / '.join(str(x) for x in machine.get('loadavg', []))}; "
        f"{len(results)} jobs in {machine.get('wall_s', '?')} s, {machine.get('date', '')}.",
        "",
        f"Command: `{machine.get('command', 'livia bench')}`",
        "",
        head,
        "|" + "|".join(["---"] * 15) + "|",
    ]
    previous = ""
    for r in results:
        name = r.scenario if r.scenario != previous else ""
        previous = r.scenario
        strategy = f"**{r.strategy}**" if r.strategy == LIVIA else r.strategy
        eff = "-" if math.isnan(r.efficiency) else f"{r.efficiency:.3f}"
        eff += "\\*" if r.against_ideal and not math.isnan(r.efficiency) else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    strategy,
                    str(r.calls),
                    r.limits if name else "",
                    _seconds(r.bound_s),
                    _seconds(r.ideal_s),
                    _seconds(r.makespan_s),
                    f"**{eff}**" if r.strategy == LIVIA else eff,
                    _peak(r),
                    str(r.over_limit),
                    str(r.http_429),
                    _seconds(r.p50_s),
                    _seconds(r.p95_s),
                    f"{r.speedup:.1f}x" if r.speedup is not None else "-",
                    r.notes.replace("|", "/"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def legend(scenarios: Sequence[Scenario]) -> Group:
    """What each scenario shows and what its figures should be."""
    lines = [Text("What to expect", style="bold")]
    for s in scenarios:
        lines.append(Text.assemble((f"{s.name}: ", "bold"), f"{s.title}. Expect: {s.expect}."))
    lines.append(
        Text(
            "bound: max(ceil(A/C)·L, floor((A-1)/R)·60 s + L, each user's chain of calls with "
            "the policy's backoff after a 5xx), A = attempts the upstream had to serve (429s "
            "excluded), C and R its real limits, L its latency. ideal: the same calls and "
            "failures on a perfect first-come-first-served scheduler (no overhead, no "
            "jitter). eff. = bound / measured, or ideal / measured where marked * (a late "
            "failure's backoff puts the bound out of any scheduler's reach): the figure the "
            "verdict below uses. peak, over-limit and 429s as the simulator "
            "counted them. speedup = the serial baseline's time / this row's.",
            style="dim",
        )
    )
    return Group(*lines)


def verdicts(
    results: Sequence[Result], scenarios: Sequence[Scenario]
) -> tuple[str, list[str], list[str]]:
    """Livia against the target: a headline, the scenarios it misses, and caveats.

    The target: efficiency (`Result.efficiency`, the figure the table shows) of at least
    0.95 against the bound (or, when a failure's backoff makes the closed form
    unreachable, against the ideal scheduler) and no request
    over a limit, except where the policy is configured above the real limit (429 storms,
    where the first wave of 429s is how Livia learns the real limit).
    """
    by_name = {s.name: s for s in scenarios}
    misses: list[str] = []
    caveats: list[str] = []
    rows = 0
    for r in results:
        if r.strategy != LIVIA:
            continue
        rows += 1
        scenario = by_name.get(r.scenario)
        reasons = []
        if math.isnan(r.efficiency):
            reasons.append(r.notes or "no measurement")
        elif r.efficiency < TARGET:
            reasons.append(f"efficiency {r.efficiency:.3f}")
        elif r.against_ideal:
            caveats.append(
                f"{r.scenario}: eff. {r.efficiency:.3f} is against the ideal schedule "
                f"({r.ideal_s:.2f} s; {r.bound_efficiency:.3f} of the closed-form bound, "
                f"{r.bound_s:.2f} s): the backoff after a late failure is out of any "
                "scheduler's reach"
            )
        if r.over_limit:
            if scenario is not None and scenario.misconfigured:
                caveats.append(
                    f"{r.scenario}: {r.over_limit} requests refused while learning the real "
                    "limit (configured above it)"
                )
            else:
                reasons.append(f"{r.over_limit} requests over the limit")
        if reasons:
            misses.append(f"{r.scenario}: " + ", ".join(reasons))
    headline = (
        f"livia meets the target in {rows - len(misses)} of {rows} scenarios "
        "(efficiency >= 0.95, no request over a limit)"
    )
    return headline, misses, caveats


class LiveProgress:
    """A rich progress bar per scenario (calls done over calls planned, all strategies)."""

    def __init__(self, jobs: Sequence[Job], console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.bar = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._left: dict[str, int] = {}
        for job in jobs:
            name = job.scenario.name
            if name not in self._tasks:
                self._tasks[name] = self.bar.add_task(name, total=0, start=False, status="waiting")
                self._left[name] = 0
            task = self.bar.tasks[self._tasks[name]]
            self.bar.update(self._tasks[name], total=(task.total or 0) + job.scenario.calls)
            self._left[name] += 1

    def __enter__(self) -> LiveProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def job_started(self, job: Job) -> None:
        task = self._tasks[job.scenario.name]
        self.bar.start_task(task)
        self.bar.update(task, status="running")

    def call_done(self, job: Job) -> None:
        self.bar.advance(self._tasks[job.scenario.name])

    def job_finished(self, job: Job, result: Result) -> None:
        name = job.scenario.name
        self._left[name] -= 1
        if not self._left[name]:
            self.bar.update(self._tasks[name], status="done")
