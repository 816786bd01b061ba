"""`livia bench`: small scenarios through the real code path (simulators over HTTP)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import aiohttp
import pytest

from livia.bench import bounds
from livia.bench.baselines import is_retryable, retrying, wait_retry_after
from livia.bench.results import FAILED, OK, AttemptRecord, CallRecord
from livia.bench.runner import plan, run_plan
from livia.bench.scenarios import Scenario, UserLoad, catalogue, seed_for_faults, select
from livia.bench.strategies import LIVIA, SEMAPHORE, SERIAL, STRATEGY_NAMES
from livia.bench.upstreams import UpstreamSpec
from livia.cli import main
from livia.concurrency import ApiPolicy, RetryableError

#: Every row of the `--json` document has at least these keys.
ROW_KEYS = {
    "name",
    "strategy",
    "calls",
    "bound_s",
    "makespan_s",
    "efficiency",
    "peak_concurrency",
    "over_limit",
    "http_429",
    "p50_s",
    "p95_s",
}


def small_scenario(
    *, calls: int = 8, real: int = 4, configured: int = 4, latency: float = 0.2
) -> Scenario:
    """`calls` one-call users against a model that really runs `real` at once."""
    spec = UpstreamSpec("openai", "openai", latency=latency, max_concurrent=real)
    policy = ApiPolicy(
        max_concurrent=configured, retry_attempts=4, backoff_min=0.1, backoff_max=0.5
    )
    return Scenario(
        "small",
        "a small scenario",
        "ceil(calls / real) x latency",
        (spec,),
        {"openai": policy},
        tuple(UserLoad(f"user-{i}", ("openai",)) for i in range(calls)),
    )


# --- the CLI, end to end --------------------------------------------------------------------


def test_cli_runs_a_scenario_and_writes_json_and_timeline(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "timeline.png"
    code = main(
        ["bench", "--quick", "--scenario", "ref-retry", "--json", str(out), "--plot", str(png)]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert {"nproc", "cpu_model", "python", "wall_s", "command"} <= set(doc["machine"])
    rows = {row["strategy"]: row for row in doc["scenarios"]}
    assert set(rows) == set(STRATEGY_NAMES)
    for row in rows.values():
        assert set(row) >= ROW_KEYS, row
        assert row["name"] == "ref-retry"
        assert row["bound_s"] == pytest.approx(6.0)  # 3 attempts of 1 s + waits of 1 s and 2 s
    livia = rows[LIVIA]
    assert livia["over_limit"] == 0 and livia["attempts"] == 3
    assert 0.95 <= livia["wait_1_s"] <= 1.6 and 1.95 <= livia["wait_2_s"] <= 2.6
    assert livia["efficiency"] >= 0.85
    assert "ref-retry" in doc["descriptions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_lists_scenarios_and_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("ref-openai", "ref-zapier", "ref-mixed", "ref-retry", "8-users", "100-users"):
        assert name in listed
    for name in ("rate-bound", "429-storm", "flaky", "fairness"):
        assert name in listed
    with pytest.raises(SystemExit, match="unknown scenario"):
        main(["bench", "--scenario", "nope"])
    with pytest.raises(SystemExit, match="unknown strategy"):
        main(["bench", "--scenario", "ref-openai", "--strategy", "nope"])


# --- small scenarios through the runner ----------------------------------------------------


async def test_livia_stays_in_limits_and_serial_is_slower() -> None:
    scenario = small_scenario()
    results = await run_plan(plan([scenario], [LIVIA, SERIAL, SEMAPHORE]))
    by = {r.strategy: r for r in results}
    livia, serial = by[LIVIA], by[SERIAL]
    assert livia.succeeded == livia.calls == 8
    assert livia.over_limit == 0 and livia.http_429 == 0
    assert livia.peak_concurrency == {"openai": 4}
    assert livia.bound_s == pytest.approx(0.4)
    assert livia.efficiency >= 0.6  # generous: other tests share the 2 cores
    assert serial.peak_concurrency == {"openai": 1}
    assert serial.makespan_s >= 2.5 * livia.makespan_s
    assert livia.speedup is not None and livia.speedup >= 2.5
    row = livia.to_json()
    assert set(row) >= ROW_KEYS and row["speedup"] == pytest.approx(livia.speedup, abs=0.01)


async def test_a_policy_above_the_real_limit_is_counted_by_the_simulator() -> None:
    scenario = small_scenario(calls=8, real=2, configured=4, latency=0.2)
    assert scenario.misconfigured
    results = await run_plan(plan([scenario], [LIVIA, SEMAPHORE]))
    by = {r.strategy: r for r in results}
    for result in results:
        assert result.peak_concurrency == {"openai": 2}  # the simulator refuses the rest
        assert result.over_limit == result.http_429 > 0
    livia = by[LIVIA]
    assert livia.succeeded == 8  # a 429 pauses the upstream; every call gets through
    assert livia.attempts == 8 + livia.http_429


# --- bounds ------------------------------------------------------------------------------------


def records(scenario: Scenario, failures: dict[str, int] | None = None) -> list[CallRecord]:
    """One record per call, each with `failures[user]` 5xx attempts before its success."""
    out = []
    for user in scenario.users:
        for api in user.calls:
            record = CallRecord(user.key, api, user.group, user.start_at, ok=True)
            for _ in range((failures or {}).get(user.key, 0)):
                record.attempts.append(AttemptRecord(0.0, 0.0, FAILED))
            record.attempts.append(AttemptRecord(0.0, 0.0, OK))
            out.append(record)
    return out


def test_bounds_match_the_design_reference_timings() -> None:
    quick = {s.name: s for s in catalogue(quick=True)}
    for name, expected in (("ref-openai", 4.0), ("ref-zapier", 4.0), ("ref-mixed", 2.0)):
        scenario = quick[name]
        assert scenario.nominal_bound == pytest.approx(expected)
        assert bounds.lower_bound(scenario, records(scenario)) == pytest.approx(expected)
        assert bounds.ideal_makespan(scenario, records(scenario)) == pytest.approx(expected)
    retry = quick["ref-retry"]
    twice = records(retry, {"user-0": 2})
    assert bounds.lower_bound(retry, twice) == pytest.approx(3 * 1.0 + 1.0 + 2.0)
    assert bounds.ideal_makespan(retry, twice) == pytest.approx(6.0)


def test_rate_bound_counts_the_minute_window() -> None:
    scenario = {s.name: s for s in catalogue(quick=True)}["rate-bound"]  # 24 calls, 16/min
    assert bounds.lower_bound(scenario, records(scenario)) == pytest.approx(60.25)
    assert bounds.ideal_makespan(scenario, records(scenario)) == pytest.approx(60.25)


def test_ideal_schedule_pays_for_a_late_failure() -> None:
    scenario = small_scenario(calls=9, real=4, configured=4, latency=1.0)
    late = records(scenario, {"user-8": 1})  # the last call to start fails once
    # Closed form: ceil(10 attempts / 4) = 3 rounds; the ideal schedule waits for the retry.
    assert bounds.lower_bound(scenario, late) == pytest.approx(3.0)
    assert bounds.ideal_makespan(scenario, late) == pytest.approx(3.0 + 0.1 + 1.0)


# --- pieces -------------------------------------------------------------------------------------


async def test_seed_for_faults_matches_the_simulator() -> None:
    from livia.sim import SimOpenAI, SimOpenAIConfig

    seed = seed_for_faults("FFS", 0.5)
    body = {"model": "livia-sim", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        SimOpenAI(SimOpenAIConfig(fail_rate=0.5, seed=seed)) as sim,
        aiohttp.ClientSession() as session,
    ):
        statuses = []
        for _ in range(3):
            async with session.post(sim.url + "/chat/completions", json=body) as response:
                statuses.append(response.status)
    assert statuses[0] >= 500 and statuses[1] >= 500 and statuses[2] == 200


def test_baseline_retries_honour_retry_after_and_skip_what_cannot_succeed() -> None:
    assert is_retryable(RetryableError("busy", status=429))
    assert is_retryable(TimeoutError())
    assert not is_retryable(ValueError("bad request"))
    policy = ApiPolicy(retry_attempts=3, backoff_min=1.0, backoff_max=60.0, backoff_jitter=0)
    strategy = retrying(policy)
    assert isinstance(strategy.wait, wait_retry_after)

    class State:
        attempt_number = 1

        class outcome:
            failed = True

            @staticmethod
            def exception() -> BaseException:
                return RetryableError("slow down", retry_after=7.5, status=429)

    assert strategy.wait(State()) == pytest.approx(7.5)  # type: ignore[arg-type]


def test_select_keeps_order_and_rejects_unknown_names() -> None:
    scenarios = catalogue(quick=True)
    assert [s.name for s in select(scenarios, ["fairness", "ref-openai"])] == [
        "fairness",
        "ref-openai",
    ]
    assert select(scenarios, None) == scenarios
    with pytest.raises(ValueError, match="unknown scenario"):
        select(scenarios, ["nope"])


def test_percentiles_and_failed_rows_are_json_safe() -> None:
    from livia.bench.results import percentile

    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert math.isnan(percentile([], 0.5))
    values = [random.random() for _ in range(101)]
    assert percentile(values, 0.95) == pytest.approx(sorted(values)[95])


def test_verdicts_tell_misses_from_caveats_and_markdown_has_every_row() -> None:
    from livia.bench.report import markdown, verdicts
    from livia.bench.results import Result

    def row(name: str, bound: float, ideal: float, measured: float, over: int = 0) -> Result:
        return Result(
            name, LIVIA, 1, 1, 1, "limits", bound, ideal, measured, {"openai": 1}, over, over, 1, 1
        )

    results = [
        row("flaky", 9.5, 11.5, 11.6),  # closed form out of reach, ideal met
        row("429-storm", 60.25, 60.5, 60.9, over=4),  # configured above the real limit
        row("rate-bound", 60.25, 60.25, 61.3, over=8),
        row("429-storm-slots", 3.0, 3.0, 5.0),
    ]
    headline, misses, caveats = verdicts(results, catalogue(quick=True))
    assert "2 of 4" in headline
    assert misses == ["rate-bound: 8 requests over the limit", "429-storm-slots: efficiency 0.600"]
    assert [c.split(":")[0] for c in caveats] == ["flaky", "429-storm"]
    table = markdown(results, {"nproc": 2, "cpu_model": "cpu", "python": "3.11"})
    assert all(f"| {r.scenario} |" in table for r in results)
