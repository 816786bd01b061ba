"""Conversations across replicas: what the shared store costs, and how fast a dead replica's
messages are taken over.

Every scenario drives the real dispatcher (`Conversations`) on the real store through
accept → claim → answer → complete with an instant model, so what is measured is the
conversations layer and its database, nothing else:

- ``in-process``: the baseline, the dispatcher as it was before replicas, in the same run:
  per-conversation lanes in memory, one aiosqlite INSERT at intake, one history SELECT and
  one UPDATE for the reply (the old store's three statements).
- ``sqlite x1``, ``postgres x1``, ``postgres x3``: Livia's dispatcher on SQLite (one
  process) and on PostgreSQL (one process, and three processes sharing the database),
  closed loop: `CONVERSATIONS` conversations at once, `MESSAGES` messages each in turn.
- ``paced``: 200 messages/s spread over three processes on PostgreSQL (open loop), and
  the in-process baseline at the same rate; the latency of each message from accept to
  reply (the model is instant). What the shared store adds is the difference of the two
  p99s. Goal: < 5 ms. Every process answers 100 messages before the clock starts (cold
  connections and statement caches cost up to ~60 ms once), and the paced runs go first,
  on a quiet database.
- ``takeover``: a process claims messages, then is killed with SIGKILL; a live process
  on the same database (lease `LEASE` s, judged by heartbeats only, as across hosts)
  answers them. Goal: within 2 × lease.

Run: ``python -m benchmarks.replicas`` (part of ``make bench``); it starts its own
PostgreSQL (Debian's binaries) unless ``LIVIA_TEST_POSTGRES_URL`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from livia.agent.events import TurnDone, TurnEvent
from livia.conversations import ChatMessage, Conversations, IncomingMessage
from livia.store import Store

CONVERSATIONS = 50
MESSAGES = 20
PACED_RATE = 200.0
PACED_SECONDS = 15.0
LEASE = 3.0


class Instant:
    """A model that answers at once: what is left to measure is Livia's own path."""

    async def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        yield TurnDone(f"ok: {text}")


class Never:
    """A model that never answers (the process is killed while it 'thinks')."""

    async def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        await asyncio.sleep(3600)
        yield TurnDone("never")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# --- the baseline: the in-process dispatcher before replicas ------------------------------


class InProcess:
    """Per-conversation FIFO in memory on one aiosqlite connection (the old loop)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db: aiosqlite.Connection | None = None
        self.locks: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        self.db = await aiosqlite.connect(self.path, isolation_level=None)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.executescript(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " conversation_id TEXT, message_id TEXT, user_id TEXT, text TEXT,"
            " status TEXT DEFAULT 'pending', reply TEXT, received_at REAL,"
            " UNIQUE (conversation_id, message_id));"
        )

    async def submit(self, msg: IncomingMessage) -> str:
        assert self.db is not None
        async with self.db.execute(
            "INSERT INTO messages (conversation_id, message_id, user_id, text, received_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq",
            (msg.conversation_id, msg.message_id, msg.user_id, msg.text, time.time()),
        ) as cur:
            seq = (await cur.fetchone() or (0,))[0]
        lock = self.locks.setdefault(msg.conversation_id, asyncio.Lock())
        async with lock:
            async with self.db.execute(
                "SELECT text, reply FROM messages WHERE conversation_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT 50",
                (msg.conversation_id, seq),
            ) as cur:
                await cur.fetchall()
            reply = f"ok: {msg.text}"
            await self.db.execute(
                "UPDATE messages SET status = 'answered', reply = ? WHERE seq = ?", (reply, seq)
            )
        return reply

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()


# --- one process's load --------------------------------------------------------------------


async def _closed_loop(submit: Any, prefix: str, conversations: int, messages: int) -> list[float]:
    latencies: list[float] = []

    async def one_conversation(c: int) -> None:
        for m in range(messages):
            msg = IncomingMessage(f"{prefix}c{c}", f"u{c % 7}", f"question {m}", f"m{m}")
            t0 = time.perf_counter()
            await submit(msg)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one_conversation(c) for c in range(conversations)))
    return latencies


async def _paced(submit: Any, prefix: str, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    tasks = []

    async def one(i: int) -> None:
        msg = IncomingMessage(f"{prefix}c{i % 200}", "u", f"question {i}", f"m{i}")
        t0 = time.perf_counter()
        await submit(msg)
        latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies


async def _warm_up(submit: Any, prefix: str) -> None:
    """Steady state is what is measured: a server answers its first messages once, while its
    connections and statement caches are still cold (up to ~60 ms each, measured)."""
    for m in range(5):
        await asyncio.gather(
            *(submit(IncomingMessage(f"{prefix}warm{c}", "u", "hello", f"w{m}")) for c in range(20))
        )


async def _livia_load(
    url: str, prefix: str, mode: str, arg: float, go: Any = None, ready: Any = None
) -> dict[str, Any]:
    async with Store(url, lease=10.0) as store:
        conv = Conversations(Instant(), store, max_active=64, max_queued=100_000)
        await conv.start()
        await _warm_up(conv.submit, prefix)
        if ready is not None:
            ready.set()
        if go is not None:
            await asyncio.to_thread(go.wait, 600)
        t0 = time.perf_counter()
        if mode == "closed":
            latencies = await _closed_loop(conv.submit, prefix, CONVERSATIONS, MESSAGES)
        else:
            latencies = await _paced(conv.submit, prefix, arg, PACED_SECONDS)
        elapsed = time.perf_counter() - t0
        await conv.aclose()
    return {"latencies": latencies, "elapsed": elapsed}


def _worker(url: str, prefix: str, mode: str, arg: float, go: Any, ready: Any, out: Any) -> None:
    out.put(asyncio.run(_livia_load(url, prefix, mode, arg, go, ready)))


def _processes(url: str, n: int, mode: str, arg: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    ready = [ctx.Event() for _ in range(n)]
    procs = [
        ctx.Process(target=_worker, args=(url, f"p{i}-", mode, arg, go, ready[i], out))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for r in ready:  # imported, connected and warmed up before the clock starts
        if not r.wait(120):
            raise RuntimeError("a benchmark process did not start")
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=30)
    latencies = [x for r in results for x in r["latencies"]]
    return {"latencies": latencies, "elapsed": max(r["elapsed"] for r in results), "wall": wall}


def _row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latencies"]
    return {
        "scenario": name,
        "messages": len(lat),
        "per_second": round(len(lat) / result["elapsed"], 1),
        "p50_ms": round(_pct(lat, 0.50) * 1000, 2),
        "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
    }


async def _baseline(folder: Path, mode: str) -> dict[str, Any]:
    old = InProcess(str(folder / f"old-{mode}.db"))
    await old.open()
    await _warm_up(old.submit, "")
    t0 = time.perf_counter()
    if mode == "closed":
        latencies = await _closed_loop(old.submit, "", CONVERSATIONS, MESSAGES)
    else:
        latencies = await _paced(old.submit, "", PACED_RATE, PACED_SECONDS)
    elapsed = time.perf_counter() - t0
    await old.close()
    return {"latencies": latencies, "elapsed": elapsed}


# --- takeover after kill -9 --------------------------------------------------------------------


def _doomed(url: str, count: int, ready: Any) -> None:
    async def run() -> None:
        store = Store(url, lease=LEASE, same_host_reaping=False)
        await store.open()
        conv = Conversations(Never(), store, max_active=64)
        await conv.start()
        for i in range(count):
            await conv.accept(IncomingMessage(f"takeover{i}", "u", "help", "m1"))
        ready.set()
        await asyncio.sleep(3600)

    asyncio.run(run())


async def _takeover(url: str, count: int = 20) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    doomed = ctx.Process(target=_doomed, args=(url, count, ready))
    doomed.start()
    if not await asyncio.to_thread(ready.wait, 60):
        raise RuntimeError("the process to kill did not start")
    async with Store(url, lease=LEASE, same_host_reaping=False) as store:
        conv = Conversations(Instant(), store, max_active=64)
        await conv.start()
        await asyncio.sleep(0.5)  # both alive: nothing is taken while the owner lives
        stolen_early = conv.stats()["answered"]
        assert doomed.pid is not None
        os.kill(doomed.pid, signal.SIGKILL)
        killed = time.perf_counter()
        while conv.stats()["answered"] < count:
            await asyncio.sleep(0.02)
            if time.perf_counter() - killed > 10 * LEASE:
                break
        took = time.perf_counter() - killed
        answered = conv.stats()["answered"]
        await conv.aclose()
    doomed.join(timeout=10)
    return {
        "scenario": "takeover",
        "messages": count,
        "answered": answered,
        "taken_before_kill": stolen_early,
        "lease_s": LEASE,
        "seconds_after_kill": round(took, 2),
        "ratio_to_lease": round(took / LEASE, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    from tests.postgres_server import postgres_server

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as pg:
        folder = Path(tmp)
        # The paced (latency) scenarios first, on a quiet machine and a fresh server: the
        # throughput runs leave PostgreSQL vacuuming and checkpointing for a while.
        before_paced = _row(
            f"in-process paced {PACED_RATE:.0f}/s", asyncio.run(_baseline(folder, "paced"))
        )
        paced = _row(
            f"paced {PACED_RATE:.0f}/s x3",
            _processes(pg.new_database(), 3, "paced", PACED_RATE / 3),
        )
        rows.append(_row("in-process (before)", asyncio.run(_baseline(folder, "closed"))))
        sqlite = f"sqlite:///{folder}/livia.db"
        rows.append(_row("sqlite x1", asyncio.run(_livia_load(sqlite, "", "closed", 0))))
        rows.append(
            _row("postgres x1", asyncio.run(_livia_load(pg.new_database(), "", "closed", 0)))
        )
        rows.append(_row("postgres x3", _processes(pg.new_database(), 3, "closed", 0)))
        rows.append(before_paced)
        rows.append(paced)
        takeover = asyncio.run(_takeover(pg.new_database()))
    base = rows[0]["per_second"]
    print(f"{'scenario':<22} {'msgs':>6} {'msg/s':>8} {'vs before':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        ratio = row["per_second"] / base if base else 0.0
        print(
            f"{row['scenario']:<22} {row['messages']:>6} {row['per_second']:>8.1f}"
            f" {ratio:>8.2f}x {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
        )
    p99, before = paced["p99_ms"], before_paced["p99_ms"]
    added = p99 - before
    print(
        f"paced: p99 {p99:.2f} ms per message from accept to reply (instant model) at"
        f" {PACED_RATE:.0f} msg/s over 3 processes on PostgreSQL; the in-process dispatcher at"
        f" the same rate {before:.2f} ms: the shared store adds {added:.2f} ms"
        f" (goal < 5 ms: {'met' if added < 5 else 'MISSED'})"
    )
    print(
        f"takeover after kill -9: {takeover['answered']}/{takeover['messages']} answered"
        f" {takeover['seconds_after_kill']:.2f} s after the kill with lease {LEASE:.0f} s"
        f" ({takeover['ratio_to_lease']:.2f} x lease; goal <= 2: "
        f"{'met' if takeover['ratio_to_lease'] <= 2 else 'MISSED'});"
        f" taken while the owner lived: {takeover['taken_before_kill']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "takeover": takeover}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
