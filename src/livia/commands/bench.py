"""`livia bench`: measure the concurrency manager against baselines on simulated upstreams.

Every scenario runs each strategy against its own simulators over real HTTP on
127.0.0.1; the table compares the measured makespan with the bound the real limits
allow, and shows what the simulators counted. `--quick` sizes everything to run in
about a minute (the per-minute scenarios need one minute by definition).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from livia.bench.results import Result
    from livia.bench.scenarios import Scenario

log = logging.getLogger("livia.bench")

#: Columns of the table when the output is not a terminal.
REPORT_WIDTH = 220

#: Loggers that would interleave a line per simulator start or retry with the progress bar.
_CHATTY = ("livia.sim", "livia.concurrency", "uvicorn", "uvicorn.error", "mcp", "matplotlib")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter latencies and fewer calls: the whole report in about a minute",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="run only this scenario (repeatable; --list shows them)",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        metavar="NAME",
        help="run only this strategy (repeatable): livia, serial, semaphore+tenacity, "
        "semaphore+aiolimiter+tenacity",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument(
        "--plot", metavar="FILE", help="write a PNG timeline of requests in flight to FILE"
    )
    parser.add_argument(
        "--markdown", metavar="FILE", help="write the results table as Markdown to FILE"
    )
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="run every (scenario, strategy) alone, one after another (slower, no overlap)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="every column of the table, whatever the terminal's width "
        "(by default a narrow terminal gets the columns that fit)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the selected scenarios; print the table; write the JSON and the PNG if asked."""
    from rich.console import Console

    from livia.bench import report
    from livia.bench.runner import plan, run_plan
    from livia.bench.scenarios import catalogue, select
    from livia.bench.strategies import STRATEGY_NAMES

    # A report read from a file or a pipe keeps its full width instead of 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=REPORT_WIDTH)
    try:
        scenarios = select(catalogue(args.quick), args.scenario)
    except ValueError as exc:
        raise SystemExit(f"livia bench: {exc}") from None
    if args.list:
        for s in scenarios:
            console.print(f"[bold]{s.name}[/]: {s.title}\n    expect: {s.expect}")
        return 0
    unknown = [s for s in args.strategy or [] if s not in STRATEGY_NAMES]
    if unknown:
        raise SystemExit(
            f"livia bench: unknown strategy {', '.join(unknown)}; known: "
            f"{', '.join(STRATEGY_NAMES)}"
        )
    jobs = plan(scenarios, args.strategy)
    if not jobs:
        raise SystemExit("livia bench: no (scenario, strategy) pair to run")

    machine = report.machine_info()
    started = time.perf_counter()
    with _quiet_loggers():
        with report.LiveProgress(jobs) as progress:
            results = asyncio.run(run_plan(jobs, progress, isolated=args.isolated))
        wall = time.perf_counter() - started
        _output(args, console, results, scenarios, machine, wall)
    failed = [r for r in results if r.notes.startswith("job failed")]
    return 1 if failed else 0


def _output(
    args: argparse.Namespace,
    console: Console,
    results: list[Result],
    scenarios: list[Scenario],
    machine: dict[str, Any],
    wall: float,
) -> None:
    """Print the table and the legend; write the JSON and the PNG if asked."""
    from rich.console import Console

    from livia.bench import report

    machine.update(
        quick=args.quick,
        isolated=args.isolated,
        wall_s=round(wall, 2),
        command=_command(args),
    )

    if args.wide and console.width < REPORT_WIDTH:  # every column, at its own width
        Console(width=REPORT_WIDTH).print(report.table(results, scenarios, wide=True))
    else:
        console.print(report.table(results, scenarios, width=console.width, wide=args.wide))
    console.print(report.legend(scenarios))
    console.print(
        f"[dim]{machine['nproc']} cores, {machine['cpu_model']}, Python {machine['python']}; "
        f"{len(results)} jobs in {wall:.1f} s[/]"
    )
    headline, misses, caveats = report.verdicts(results, scenarios)
    console.print(f"[bold]{headline}[/]")
    for line in misses:
        console.print(f"[yellow]  below target:[/] {line}")
    for line in caveats:
        console.print(f"[dim]  note:[/] {line}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.document(results, scenarios, machine), indent=2) + "\n")
        console.print(f"results written to {path}")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.markdown(results, machine))
        console.print(f"table written to {path}")
    if args.plot:
        from livia.bench.plot import plot_timelines

        console.print(f"timeline written to {plot_timelines(results, args.plot)}")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run."""
    words = ["livia", "bench"]
    if args.quick:
        words.append("--quick")
    if args.isolated:
        words.append("--isolated")
    for option, values in (("--scenario", args.scenario), ("--strategy", args.strategy)):
        for value in values or []:
            words += [option, value]
    for option, value in (
        ("--json", args.json),
        ("--markdown", args.markdown),
        ("--plot", args.plot),
    ):
        if value:
            words += [option, value]
    return " ".join(shlex.quote(w) for w in words)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """Keep per-request INFO lines off the progress bar (unless logging at DEBUG)."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in _CHATTY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
