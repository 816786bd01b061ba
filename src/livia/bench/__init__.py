"""`livia bench`: the concurrency manager measured against baselines, on real HTTP.

Each scenario runs every strategy — Livia's `ConcurrencyManager`, one-at-a-time
(`serial`), `semaphore+tenacity` and `semaphore+aiolimiter+tenacity` — against its own
simulated upstreams (`livia.sim`) on 127.0.0.1, configured with the upstream's real
limits, and reports the makespan next to the bound, what the simulator counted (peak
concurrency, requests over a limit, 429s) and per-call latency::

    scenarios = select(catalogue(quick=True), ["ref-openai"])
    results = await run_plan(plan(scenarios))
"""

from livia.bench.bounds import ideal_makespan, lower_bound
from livia.bench.results import CallRecord, Result
from livia.bench.runner import Job, plan, run_job, run_plan
from livia.bench.scenarios import Scenario, UserLoad, catalogue, select
from livia.bench.strategies import STRATEGY_NAMES, Strategy, make_strategy
from livia.bench.upstreams import UpstreamSpec

__all__ = [
    "STRATEGY_NAMES",
    "CallRecord",
    "Job",
    "Result",
    "Scenario",
    "Strategy",
    "UpstreamSpec",
    "UserLoad",
    "catalogue",
    "ideal_makespan",
    "lower_bound",
    "make_strategy",
    "plan",
    "run_job",
    "run_plan",
    "select",
]
