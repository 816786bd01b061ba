"""Running benchmark jobs: one (scenario, strategy) pair each, on its own simulators.

A job starts its simulators and client, waits for the other jobs of its group to be
ready (so no simulator start-up steals CPU from a measurement), zeroes the simulators,
runs the users' calls through the strategy, and reads what the simulators counted.

`run_plan` schedules the jobs on one event loop. Jobs that spend their time waiting —
the scenarios a per-minute window binds (nothing makes them shorter than a minute) and
the serial baseline — run in a background lane from the start. The other jobs run one
scenario at a time, that scenario's strategies side by side, their starts staggered
over one latency. The background lane adds a few requests a second, which is what keeps
a full `--quick` report near one minute on 2 cores; `isolated=True` runs each job alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from livia.bench.bounds import ideal_makespan, lower_bound
from livia.bench.results import (
    FAILED,
    OK,
    REFUSED,
    AttemptRecord,
    CallRecord,
    Result,
    percentile,
)
from livia.bench.scenarios import Scenario, UserLoad
from livia.bench.strategies import SERIAL, Strategy, make_strategy
from livia.bench.upstreams import SimUpstream, UpstreamMeasure, make_upstream
from livia.concurrency import RetryableError

log = logging.getLogger("livia.bench")

#: Most seconds a job may spend starting its simulators and client.
SETUP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, eq=False)
class Job:
    """One scenario run with one strategy (compared and hashed by identity)."""

    scenario: Scenario
    strategy: str

    @property
    def background(self) -> bool:
        """Mostly waiting: the serial baseline, or a scenario marked `background`."""
        return self.scenario.background or self.strategy == SERIAL

    @property
    def label(self) -> str:
        return f"{self.scenario.name} · {self.strategy}"


class Progress(Protocol):
    """Told what the jobs are doing (the CLI draws a progress bar from it)."""

    def job_started(self, job: Job) -> None: ...

    def call_done(self, job: Job) -> None: ...

    def job_finished(self, job: Job, result: Result) -> None: ...


class NoProgress:
    """A `Progress` that ignores everything."""

    def job_started(self, job: Job) -> None:
        return None

    def call_done(self, job: Job) -> None:
        return None

    def job_finished(self, job: Job, result: Result) -> None:
        return None


def plan(scenarios: Sequence[Scenario], strategies: Sequence[str] | None = None) -> list[Job]:
    """Every (scenario, strategy) job, in report order; `strategies` narrows them."""
    return [
        Job(scenario, name)
        for scenario in scenarios
        for name in scenario.strategies
        if strategies is None or name in strategies
    ]


async def run_plan(
    jobs: Sequence[Job], progress: Progress | None = None, *, isolated: bool = False
) -> list[Result]:
    """Run every job (see the module docstring for the schedule); results in job order."""
    progress = progress or NoProgress()
    results: dict[Job, Result] = {}
    if isolated:
        for job in jobs:
            results.update(await _run_group([job], progress))
        with_speedups(list(results.values()))
        return [results[j] for j in jobs]
    # All background jobs set up before any starts: a simulator starting up takes the
    # CPU from a measurement under way.
    background = [j for j in jobs if j.background]
    running: list[asyncio.Task[dict[Job, Result]]] = []
    try:
        started = asyncio.Event()
        running.append(
            asyncio.create_task(_run_group(background, progress, started), name="bench-background")
        )
        async with asyncio.timeout(SETUP_TIMEOUT):
            await started.wait()  # the lane sets it even when it fails
        foreground = [j for j in jobs if not j.background]
        for _, group in itertools.groupby(foreground, key=lambda j: j.scenario.name):
            results.update(await _run_group(list(group), progress))
        for task in running:
            results.update(await task)
    finally:
        for task in running:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    with_speedups(list(results.values()))
    return [results[j] for j in jobs]


async def _run_group(
    jobs: Sequence[Job], progress: Progress, started: asyncio.Event | None = None
) -> dict[Job, Result]:
    """Run `jobs` side by side, their measurements starting together once all are ready."""
    go = asyncio.Event()
    readies = [asyncio.Event() for _ in jobs]
    tasks = [
        asyncio.create_task(
            run_job(job, progress, ready, go, delay=_stagger(jobs, i)), name=f"bench:{job.label}"
        )
        for i, (job, ready) in enumerate(zip(jobs, readies, strict=True))
    ]
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            await asyncio.gather(*(ready.wait() for ready in readies))  # set even on failure
        go.set()
        if started is not None:
            started.set()
        done = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if started is not None:
            started.set()
    return dict(zip(jobs, done, strict=True))


def _stagger(jobs: Sequence[Job], index: int) -> float:
    """Start offset of job `index` in a group of one scenario's strategies.

    Spread over one latency, so the strategies' rounds of requests do not all end at the
    same instant and queue for the one CPU the event loop runs on.
    """
    if len({j.scenario.name for j in jobs}) != 1:
        return 0.0
    latency = min(s.latency for s in jobs[0].scenario.upstreams)
    return index * latency / len(jobs)


async def run_job(
    job: Job,
    progress: Progress | None = None,
    ready: asyncio.Event | None = None,
    go: asyncio.Event | None = None,
    *,
    delay: float = 0.0,
) -> Result:
    """Run one job on fresh simulators; a job that cannot run is a row saying why.

    With `ready` and `go`, the job sets `ready` when its simulators are up (or when it
    failed to start them) and starts measuring `delay` seconds after `go` is set.
    """
    progress = progress or NoProgress()
    scenario = job.scenario
    try:
        async with (
            asyncio.timeout(SETUP_TIMEOUT + scenario.timeout),
            contextlib.AsyncExitStack() as stack,
        ):
            upstreams = {spec.api: make_upstream(spec) for spec in scenario.upstreams}
            for upstream in upstreams.values():
                await upstream.start(stack)
            strategy = make_strategy(job.strategy, scenario.policies, scenario.timeout)
            stack.push_async_callback(strategy.aclose)
            if ready is not None:
                ready.set()
            if go is not None:
                await go.wait()
            if delay > 0:
                await asyncio.sleep(delay)
            progress.job_started(job)
            for upstream in upstreams.values():
                upstream.reset()
            t0 = asyncio.get_running_loop().time()
            records = await _workload(job, strategy, upstreams, t0, progress)
            measures = [up.measure(t0) for up in upstreams.values()]
        result = summarise(job, records, measures)
    except Exception as exc:  # a broken job is a row in the report, not a crash
        log.warning(
            "bench job %s failed: %s", job.label, exc, exc_info=log.isEnabledFor(logging.DEBUG)
        )
        result = _failed_result(job, f"job failed: {type(exc).__name__}: {exc}")
    finally:
        if ready is not None:
            ready.set()
    progress.job_finished(job, result)
    return result


async def _workload(
    job: Job,
    strategy: Strategy,
    upstreams: dict[str, SimUpstream],
    t0: float,
    progress: Progress,
) -> list[CallRecord]:
    """Every user's calls through `strategy`; returns one record per call."""
    loop = asyncio.get_running_loop()
    records: list[CallRecord] = []

    def clock() -> float:
        return loop.time() - t0

    async def one(user: UserLoad, api: str, index: int) -> None:
        record = CallRecord(user.key, api, user.group, clock())
        records.append(record)
        upstream = upstreams[api]

        async def attempt() -> None:
            trial = AttemptRecord(clock())
            record.attempts.append(trial)
            # The same name in every strategy: the simulator draws this attempt's fault
            # from it, so all strategies meet one failure schedule.
            name = f"{user.key}/{index}/{len(record.attempts)}"
            try:
                await upstream.attempt(name)
                trial.outcome = OK
            except RetryableError as exc:
                trial.outcome = REFUSED if exc.status == 429 else FAILED
                raise
            except asyncio.CancelledError:
                trial.outcome = "cancelled"
                raise
            except BaseException:
                trial.outcome = FAILED
                raise
            finally:
                trial.end = clock()

        try:
            await strategy.call(api, attempt, user.key)
            record.ok = True
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            record.finished = clock()
            progress.call_done(job)

    async def run_user(user: UserLoad) -> None:
        if user.start_at > 0:
            await asyncio.sleep(user.start_at)
        if user.sequential:
            for index, api in enumerate(user.calls):
                await one(user, api, index)
        else:
            await asyncio.gather(*(one(user, api, i) for i, api in enumerate(user.calls)))

    try:
        async with asyncio.timeout(job.scenario.timeout):
            await asyncio.gather(*(run_user(u) for u in job.scenario.users))
    except TimeoutError:
        log.warning("bench job %s stopped after %.0f s", job.label, job.scenario.timeout)
        for record in records:
            if math.isnan(record.finished):
                record.finished = clock()
            if not record.ok and not record.error:
                record.error = "stopped: the job ran out of time"
    return records


def summarise(job: Job, records: list[CallRecord], measures: list[UpstreamMeasure]) -> Result:
    """The report row for a finished job."""
    scenario = job.scenario
    finished = [r.finished for r in records if not math.isnan(r.finished)]
    makespan = max(finished) if finished else math.nan
    latencies = [r.latency for r in records if r.ok]
    notes, extra = _notes(records)
    return Result(
        scenario=scenario.name,
        strategy=job.strategy,
        calls=len(records),
        succeeded=sum(1 for r in records if r.ok),
        attempts=sum(len(r.attempts) for r in records),
        limits=scenario.describe_limits(),
        bound_s=lower_bound(scenario, records),
        ideal_s=ideal_makespan(scenario, records),
        makespan_s=makespan,
        peak_concurrency={m.api: m.peak for m in measures},
        over_limit=sum(m.over_limit for m in measures),
        http_429=sum(m.refused for m in measures),
        p50_s=percentile(latencies, 0.50),
        p95_s=percentile(latencies, 0.95),
        notes=notes,
        extra=extra,
        upstreams=measures,
        records=records,
    )


def _notes(records: list[CallRecord]) -> tuple[str, dict[str, float]]:
    """Scenario-specific figures: retry waits, failures, waste, light vs heavy users."""
    notes: list[str] = []
    extra: dict[str, float] = {}
    groups = {r.group for r in records}
    if {"heavy", "light"} <= groups:
        for group in ("light", "heavy"):
            lat = [r.latency for r in records if r.group == group and r.ok]
            extra[f"{group}_p95_s"] = percentile(lat, 0.95)
        notes.append(
            f"light p95 {extra['light_p95_s']:.2f} s, heavy p95 {extra['heavy_p95_s']:.2f} s"
        )
    if len(records) == 1 and len(records[0].attempts) > 1:
        trials = records[0].attempts
        waits = [b.start - a.end for a, b in itertools.pairwise(trials)]
        for i, wait in enumerate(waits, 1):
            extra[f"wait_{i}_s"] = wait
        outcomes = "/".join(t.outcome for t in trials)
        notes.append(f"{outcomes}; waits " + ", ".join(f"{w:.2f} s" for w in waits))
    elif any(r.count(FAILED) for r in records):
        failures = sum(r.count(FAILED) for r in records)
        notes.append(f"{failures} 5xx retried")
    succeeded = sum(1 for r in records if r.ok)
    if succeeded < len(records) or any(r.count(FAILED) for r in records):
        notes.append(f"success {succeeded / len(records):.1%}" if records else "no calls")
    refused = sum(r.count(REFUSED) for r in records)
    if refused:
        notes.append(f"{refused} attempts refused (429)")
    failed = [r.error for r in records if not r.ok]
    if failed:
        kinds = sorted({":".join(e.split(":")[:2]).strip() for e in failed})
        notes.append(f"{len(failed)} calls failed ({'; '.join(kinds)[:80]})")
    return "; ".join(notes), extra


def _failed_result(job: Job, why: str) -> Result:
    scenario = job.scenario
    return Result(
        scenario=scenario.name,
        strategy=job.strategy,
        calls=scenario.calls,
        succeeded=0,
        attempts=0,
        limits=scenario.describe_limits(),
        bound_s=scenario.nominal_bound,
        ideal_s=math.nan,
        makespan_s=math.nan,
        peak_concurrency={},
        over_limit=0,
        http_429=0,
        p50_s=math.nan,
        p95_s=math.nan,
        notes=why[:300],
    )


def with_speedups(results: list[Result]) -> None:
    """Set each row's speedup: the serial baseline's makespan over the row's (same scenario)."""
    serial = {r.scenario: r.makespan_s for r in results if r.strategy == SERIAL}
    for result in results:
        base = serial.get(result.scenario)
        if base and not math.isnan(base) and result.makespan_s > 0:
            result.speedup = base / result.makespan_s
