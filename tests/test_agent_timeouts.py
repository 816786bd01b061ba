"""Hung and stalled model streams (issue 10 item 10), against the simulated model on a real
socket: a hung attempt gives its slot back within `[llm] attempt_timeout`, a stalled stream
within `[llm] stream_idle_timeout`, and either is retried while no text reached the user;
other conversations wait for those bounds, never for the whole `[llm] timeout`.

The simulator draws its faults from `seed`; with requests one after another the draws are
in a fixed order (seed 1 gives 0.13 then 0.85: the first request faults, the second not).
"""

from __future__ import annotations

import asyncio
import time

from livia.agent import TextDelta
from livia.concurrency import ApiPolicy, ConcurrencyManager
from livia.sim import SimOpenAI, SimOpenAIConfig
from tests.test_agent_integration import (
    FAST,
    assert_well_formed,
    policies,
    running_agent,
    settings_for,
    turn,
    wait_until,
)

#: With seed 1 and a fault rate of 0.5, the first request faults and the second does not.
SEED = 1


async def test_a_stream_stalled_before_any_text_is_abandoned_and_retried() -> None:
    async with SimOpenAI(
        SimOpenAIConfig(latency=0.05, stall_rate=0.5, stall_after=1, seed=SEED, hang_max=60)
    ) as sim:
        manager = ConcurrencyManager(policies())
        settings = settings_for(sim.url, timeout=30.0, stream_idle_timeout=0.5)
        async with running_agent(settings, manager) as agent:
            began = time.monotonic()
            events = await turn(agent, "Tell me about tides in Brittany")
            elapsed = time.monotonic() - began
            stats = manager.get_stats("openai")

    done = assert_well_formed(events)
    assert done.error is None and "tides" in done.text
    assert sim.stats.stalled == 1 and sim.stats.requests == 2  # the stall, then a retry
    assert stats["retries"] == 1 and stats["concurrent_requests"] == 0
    assert 0.5 <= elapsed < 3.0, elapsed  # one idle timeout, not the 30 s whole timeout


async def test_a_hung_request_is_cut_at_the_attempt_timeout_and_retried() -> None:
    async with SimOpenAI(
        SimOpenAIConfig(latency=0.05, timeout_rate=0.5, seed=SEED, hang_max=60)
    ) as sim:
        manager = ConcurrencyManager(policies())
        settings = settings_for(sim.url, timeout=30.0, attempt_timeout=0.6, stream_idle_timeout=0.0)
        async with running_agent(settings, manager) as agent:
            began = time.monotonic()
            events = await turn(agent, "How do I boil an egg?")
            elapsed = time.monotonic() - began

    done = assert_well_formed(events)
    assert done.error is None and "boil an egg" in done.text
    assert sim.stats.timed_out == 1 and sim.stats.requests == 2
    assert 0.6 <= elapsed < 3.0, elapsed


async def test_an_upstream_that_always_hangs_ends_the_turn_at_the_whole_timeout() -> None:
    async with SimOpenAI(SimOpenAIConfig(timeout_rate=1.0, hang_max=60)) as sim:
        manager = ConcurrencyManager(policies())
        settings = settings_for(sim.url, timeout=2.0, attempt_timeout=0.4)
        async with running_agent(settings, manager) as agent:
            began = time.monotonic()
            events = await turn(agent, "hello")
            elapsed = time.monotonic() - began

    done = assert_well_formed(events)
    assert done.error is not None and done.text.startswith("Sorry")
    assert sim.stats.timed_out >= 3  # attempt after attempt, each cut at 0.4 s
    assert elapsed < 3.0, elapsed  # bounded by [llm] timeout (2 s) plus a little


async def test_streams_stalled_mid_reply_free_their_slots_for_other_conversations() -> None:
    """Two streams stop after some text and hold both model slots; a third conversation
    gets a slot when the idle timeout abandons them (not after the 30 s whole timeout),
    and the stalled ones end with an apology without repeating the text."""
    idle = 0.8
    async with (
        SimOpenAI(
            SimOpenAIConfig(latency=0.1, stall_rate=1.0, stall_after=3, hang_max=60)
        ) as stalling,
        SimOpenAI(SimOpenAIConfig(latency=0.1)) as healthy,
    ):
        manager = ConcurrencyManager(
            policies(openai=ApiPolicy(max_concurrent=2, retry_attempts=3, **FAST))  # type: ignore[arg-type]
        )
        slow = settings_for(stalling.url, timeout=30.0, stream_idle_timeout=idle)
        good = settings_for(healthy.url, timeout=30.0, stream_idle_timeout=idle)
        async with running_agent(slow, manager) as stuck, running_agent(good, manager) as other:
            began = time.monotonic()
            stuck_turns = [
                asyncio.create_task(turn(stuck, f"Explain topic {i} in detail", key=f"u{i}"))
                for i in range(2)
            ]
            await wait_until(
                lambda: manager.get_stats("openai")["concurrent_requests"] == 2, timeout=5.0
            )
            answered = await turn(other, "What is a good name for a cat?", key="u9")
            waited = time.monotonic() - began
            stuck_events = await asyncio.gather(*stuck_turns)
            freed = time.monotonic() - began

    done = assert_well_formed(answered)
    assert done.error is None and "cat" in done.text
    assert idle * 0.9 <= waited < idle + 2.0, waited  # blocked for the idle bound only
    assert freed < idle + 2.0, freed
    for events in stuck_events:
        stuck_done = assert_well_formed(events)
        shown = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert stuck_done.error == "model_interrupted"
        assert "stopped sending my answer partway" in stuck_done.text
        assert shown.count("Explain topic") <= 1  # the text is never repeated
    assert stalling.stats.stalled == 2 and stalling.stats.requests == 2  # not retried
