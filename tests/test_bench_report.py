"""`livia bench`'s report: readable at 80 and 120 columns, one failure schedule, honest eff."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from livia.bench.report import legend, table, verdicts
from livia.bench.results import FAILED, Result
from livia.bench.runner import plan, run_plan
from livia.bench.scenarios import Scenario, UserLoad, catalogue
from livia.bench.strategies import LIMITER, LIVIA, SEMAPHORE, SERIAL, STRATEGY_NAMES
from livia.bench.upstreams import UpstreamSpec
from livia.cli import main
from livia.concurrency import ApiPolicy
from livia.sim.openai import FAULT_KEY_HEADER, SimOpenAI, SimOpenAIConfig

ROOT = Path(__file__).resolve().parents[1]


def sample_results() -> tuple[list[Result], list[Scenario]]:
    """Rows for a few real scenarios, with figures of every width the table shows."""
    scenarios = catalogue(quick=True)
    chosen = [s for s in scenarios if s.name in ("ref-openai", "429-storm-slots", "flaky")]
    results = []
    for s in chosen:
        for strategy in STRATEGY_NAMES:
            slow = strategy == SERIAL
            results.append(
                Result(
                    s.name,
                    strategy,
                    64,
                    64,
                    69,
                    s.describe_limits(),
                    bound_s=4.5,
                    ideal_s=6.0 if s.name == "flaky" else 4.5,
                    makespan_s=39.89 if slow else 6.58,
                    peak_concurrency={"openai": 1 if slow else 8},
                    over_limit=0,
                    http_429=12,
                    p50_s=17.65 if slow else 2.02,
                    p95_s=20.7 if slow else 2.88,
                    notes="5 5xx retried; success 100.0%",
                    speedup=1.0 if slow else 6.1,
                )
            )
    return results, chosen


def render(width: int, *, wide: bool = False) -> str:
    results, scenarios = sample_results()
    console = Console(file=io.StringIO(), width=width)
    console.print(table(results, scenarios, width=width, wide=wide))
    return console.file.getvalue()  # type: ignore[attr-defined]


def cells(out: str) -> list[str]:
    return [c.strip() for line in out.splitlines() for c in re.split("[│┃]", line)[1:-1]]


@pytest.mark.parametrize("width", [80, 120])
def test_the_table_is_readable_at_common_widths(width: int) -> None:
    out = render(width)
    assert max(len(line) for line in out.splitlines()) <= width
    found = cells(out)
    for figure in ("4.50", "6.58", "39.89", "0.684", "0.150*", "0.912*", "2.88", "20.70"):
        assert figure in found, (figure, out)
    # nothing squeezed: no cell cut to "0." or "2.", no ellipsis, no empty header
    assert not [c for c in found if re.fullmatch(r"\d+\.", c)], out
    assert "…" not in out
    assert "┃┃" not in out
    assert "--wide shows them" in out
    assert "livia" in found


def test_wider_terminals_get_more_columns_and_wide_gets_all() -> None:
    narrow, medium, full = cells(render(80)), cells(render(120)), cells(render(260))
    for header in ("limit", "ideal s", "p50 s", "speedup", "notes"):
        assert header not in narrow
        assert header in full
    results, scenarios = sample_results()
    assert len(table(results, scenarios, width=80, wide=True).columns) == 15
    assert "semaphore+aiolimiter+tenacity" in medium  # full names once they fit
    assert "sem+lim+ten" in narrow


def test_the_shown_efficiency_is_the_one_the_verdict_uses() -> None:
    results, scenarios = sample_results()
    flaky = next(r for r in results if r.scenario == "flaky" and r.strategy == LIVIA)
    assert flaky.against_ideal and flaky.efficiency == pytest.approx(6.0 / 6.58)
    assert f"{flaky.efficiency:.3f}*" in cells(render(120))
    _, misses, _ = verdicts(results, scenarios)
    assert f"flaky: efficiency {flaky.efficiency:.3f}" in misses
    flaky.makespan_s = 6.1  # within 5 % of the ideal: a caveat, not a miss
    _, misses, caveats = verdicts(results, scenarios)
    assert not any(m.startswith("flaky") for m in misses)
    (caveat,) = [c for c in caveats if c.startswith("flaky")]
    assert f"eff. {flaky.efficiency:.3f} is against the ideal schedule" in caveat
    row = flaky.to_json()
    assert row["efficiency"] == round(flaky.efficiency, 4)
    assert row["efficiency_against"] == "ideal"
    assert row["bound_efficiency"] == round(4.5 / 6.1, 4)


def test_no_reference_to_a_design_page_the_repository_lacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert not (ROOT / "DESIGN.md").exists()
    assert main(["bench", "--quick", "--list"]) == 0
    listed = capsys.readouterr().out
    console = Console(file=io.StringIO(), width=200)
    console.print(legend(catalogue(quick=True)))
    for text in (listed, console.file.getvalue(), (ROOT / "docs" / "bench.md").read_text()):  # type: ignore[attr-defined]
        assert "DESIGN.md" not in text


# --- one failure schedule for every strategy ----------------------------------------------


async def test_the_simulator_draws_a_keyed_fault_whatever_the_order() -> None:
    keys = [f"user-{i}/0/1" for i in range(30)]

    async def outcomes(order: list[str]) -> dict[str, int]:
        async with SimOpenAI(SimOpenAIConfig(fail_rate=0.5, seed=3)) as sim:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as session:
                out = {}
                for key in order:
                    async with session.post(
                        f"{sim.url}/chat/completions", json=body, headers={FAULT_KEY_HEADER: key}
                    ) as response:
                        out[key] = response.status
                return out

    forward, backward = await asyncio.gather(outcomes(keys), outcomes(keys[::-1]))
    assert forward == backward
    assert {200} < set(forward.values())  # some failed, some did not


async def test_every_strategy_meets_the_same_failures() -> None:
    spec = UpstreamSpec("openai", "openai", latency=0.05, max_concurrent=4, fail_rate=0.3, seed=5)
    policy = ApiPolicy(max_concurrent=4, retry_attempts=6, backoff_min=0.05, backoff_max=0.2)
    scenario = Scenario(
        "small-flaky",
        "12 users x 2 calls, 30 % 5xx",
        "the same failures for every strategy",
        (spec,),
        {"openai": policy},
        tuple(UserLoad(f"user-{i}", ("openai", "openai")) for i in range(12)),
    )
    results = await run_plan(plan([scenario], [LIVIA, SERIAL, SEMAPHORE, LIMITER]))

    def schedule(result: Result) -> list[tuple[str, int]]:
        return sorted((r.user, r.count(FAILED)) for r in result.records)

    first = results[0]
    assert sum(n for _, n in schedule(first)) > 0
    for result in results:
        assert result.succeeded == result.calls == 24, result.strategy
        assert schedule(result) == schedule(first), result.strategy
        assert result.upstreams[0].failed == first.upstreams[0].failed
        assert result.bound_s == pytest.approx(first.bound_s)
