"""`IdleTimeout` bounds the gaps in a stream, not its length (on a fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from livia.agent.idle import IdleTimeout

pytestmark = pytest.mark.looptime


async def test_touches_keep_a_long_stream_alive_and_a_gap_ends_it() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    gap = IdleTimeout(1.0)
    with pytest.raises(TimeoutError):
        async with gap:
            for _ in range(10):  # 10 chunks 0.9 s apart: 9 s in all, no gap of 1 s
                await asyncio.sleep(0.9)
                gap.touch()
            await asyncio.sleep(5)  # then silence
    assert gap.expired
    assert loop.time() - start == pytest.approx(10.0, abs=0.01)  # 1 s after the last touch


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    gap = IdleTimeout(5.0)

    async def body() -> None:
        async with gap:
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not gap.expired


async def test_none_never_times_out_and_a_quiet_block_leaves_no_timer() -> None:
    async with IdleTimeout(None) as gap:
        await asyncio.sleep(3600)
        gap.touch()
    async with IdleTimeout(1.0) as quick:
        await asyncio.sleep(0.5)
    await asyncio.sleep(5)  # its timer was cancelled on exit: nothing fires later
    assert not gap.expired and not quick.expired


async def test_its_cancellation_is_taken_back_whatever_the_block_made_of_it() -> None:
    task = asyncio.current_task()
    assert task is not None
    gap = IdleTimeout(1.0)
    with pytest.raises(RuntimeError):
        async with gap:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise RuntimeError("turned into something else") from None
    assert gap.expired and task.cancelling() == 0  # an outer timeout still sees its own
