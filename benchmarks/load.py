"""Many people at once: N conversations × M messages through a real `livia serve` over HTTP.

The model is `livia sim openai` (a subprocess) at a given latency and limits. In the same
run, two references calling the same simulator with the same concurrency: the baseline,
the bare `openai` SDK (what a process with no Livia around it costs), and the floor, the
cheapest client there is (aiohttp, the body read and not decoded: what this machine, its
cores shared with the simulator, allows at all). Printed:

- throughput, and its ratio to the upstream bound: the least makespan the upstream
  allows (the longest conversation's M latencies, drawn from the same distribution; with
  limits, also N·M·mean latency ÷ max_concurrent and the per-minute rate); the baseline's
  ratio to the same bound shows what one client process reaches on this machine;
- added latency p50/p99: Livia's end-to-end latency per message minus the baseline's, and
  minus the floor's, at the same percentile (same latency distribution and seed);
- peak RSS and open fds of the serving processes (sampled every 0.25 s), the event loop's
  lag (each worker's `/stats` "loop"), CPU per message (server processes' user + system
  time, against the SDK's in the baseline);
- lost (no reply) and twice (model calls beyond one per message, counted by the simulator).

Run: ``python -m benchmarks.load`` (``--conversations 1000 --messages 3 --workers 2``,
``--latency uniform:0.5:2``, ``--limits reference``, ``--coordination redis``); part of
``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

#: The reference limits of the model upstream (README), when `--limits reference`.
REFERENCE = {"max_concurrent": 8, "requests_per_minute": 500, "requests_per_hour": 10_000}
#: Limits high enough never to bind (`--limits none`).
UNBOUND = {"max_concurrent": 100_000, "requests_per_minute": 10**8, "requests_per_hour": 10**9}
_CLK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstream_bound(spec: str, n: int, m: int, limits: dict[str, int], seed: int = 7) -> float:
    """The least makespan the upstream allows: each conversation's messages go one after
    another (so the longest sum of m latencies, over n conversations, drawn here from the
    same distribution), and with limits no faster than the slots and the minute allow."""
    import random

    from livia.sim.latency import parse_latency

    latency = parse_latency(spec)
    rng = random.Random(seed)
    draws = [[latency.sample(rng) for _ in range(m)] for _ in range(n)]
    longest = max(sum(d) for d in draws)
    mean = statistics.fmean(x for d in draws for x in d)
    total = n * m
    slots = total * mean / limits["max_concurrent"]
    rpm = limits["requests_per_minute"]
    rate = 60.0 * (math.ceil(total / rpm) - 1) if total > rpm else 0.0
    return max(longest, slots, rate)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the serving processes, seen through /proc -----------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its children (the workers), from /proc."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for kid in kids:
        out += _tree(int(kid))
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _cpu_s(pid: int) -> float:
    """User + system seconds of `pid` (and of its children it has waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLK


@dataclass
class Sampler:
    """Peak RSS (per process) and fds (per process) of a process tree, sampled."""

    root: int
    rss_mb: dict[int, float] = field(default_factory=dict)
    fds: dict[int, int] = field(default_factory=dict)

    def sample(self) -> None:
        for pid in _tree(self.root):
            self.rss_mb[pid] = max(self.rss_mb.get(pid, 0.0), _rss_mb(pid))
            self.fds[pid] = max(self.fds.get(pid, 0), _fds(pid))

    def cpu(self) -> float:
        return sum(_cpu_s(pid) for pid in _tree(self.root))

    async def run(self, every: float = 0.25) -> None:
        while True:
            self.sample()
            await asyncio.sleep(every)


# --- the simulator, Redis and livia serve ------------------------------------------------


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args!r} exited:\n{_tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready within {timeout} s:\n{_tail(log)}")


# --- the workloads ------------------------------------------------------------------------


@dataclass
class Result:
    makespan: float
    latencies: list[float]
    failures: int
    cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)


async def _people(
    n: int, m: int, send: Callable[[int, int], Awaitable[bool]], cpu: Callable[[], float]
) -> Result:
    """n conversations at once, each sending its m messages one after another (`send(c, i)`
    says whether message i of conversation c was answered): makespan, the answered
    messages' latencies, the failures, and how much `cpu` grew meanwhile."""
    latencies: list[float] = []
    failures = 0

    async def conversation(c: int) -> None:
        nonlocal failures
        for i in range(m):
            t0 = time.perf_counter()
            if await send(c, i):
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1

    cpu0 = cpu()
    t0 = time.perf_counter()
    await asyncio.gather(*(conversation(c) for c in range(n)))
    return Result(time.perf_counter() - t0, latencies, failures, cpu() - cpu0)


def _aiohttp_session(n: int, base_url: str | None = None) -> Any:
    """aiohttp's client for n people at once. Idle connections are let go before the
    server's keep-alive (5 s) would close them: a request written as the server closes its
    side is reset (the usual race)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=n + 10, keepalive_timeout=3.0)
    timeout = aiohttp.ClientTimeout(total=300)
    return aiohttp.ClientSession(base_url, connector=connector, timeout=timeout)


def _chat_request(c: int, i: int) -> dict[str, Any]:
    """The model request of message i of conversation c, as Livia makes it: streamed,
    usage in the last chunk."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"conversation {c} message {i}"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def baseline(sim_url: str, n: int, m: int, limit: int | None) -> Result:
    """The bare openai SDK: n conversations × m sequential calls, `limit` at once (if set)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="sim", max_retries=0, timeout=120)
    gate = asyncio.Semaphore(limit) if limit else contextlib.nullcontext()

    async def send(c: int, i: int) -> bool:
        try:
            async with gate:
                stream = await client.chat.completions.create(**_chat_request(c, i))
                text = ""
                async with stream:
                    async for chunk in stream:
                        for choice in chunk.choices[:1]:
                            text += choice.delta.content or ""
        except Exception:
            return False
        return True

    result = await _people(n, m, send, time.process_time)
    await client.close()
    return result


async def floor(sim_url: str, n: int, m: int, limit: int | None) -> Result:
    """The floor of this machine: the same calls as `baseline`, by the cheapest client
    (aiohttp, the body read to its end, nothing decoded). What is left between it and the
    upstream bound is the simulator's and this process's own CPU on shared cores."""
    import aiohttp

    gate = asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
    async with _aiohttp_session(n) as client:

        async def send(c: int, i: int) -> bool:
            url = f"{sim_url}/v1/chat/completions"
            try:
                async with gate, client.post(url, json=_chat_request(c, i)) as response:
                    async for _ in response.content.iter_any():
                        pass
                    return bool(response.status == 200)
            except (aiohttp.ClientError, TimeoutError):
                return False

        return await _people(n, m, send, time.process_time)


async def through_livia(url: str, n: int, m: int, sampler: Sampler) -> Result:
    """n conversations × m messages, each message sent when the previous one is answered.

    The people are played by aiohttp's client: httpx's pool walks all its connections per
    request, which at hundreds of connections made this process, not Livia, the bottleneck
    (16.7 ms of CPU per message, measured)."""
    import aiohttp

    resent = [0]
    reasons: dict[str, int] = {}
    async with _aiohttp_session(n, url) as client:

        async def send(c: int, i: int) -> bool:
            body = {
                "conversation_id": f"load-{c}",
                "user_id": f"user-{c}",
                "text": f"conversation {c} message {i}",
                "message_id": f"load-{c}-{i}",
            }
            for _ in range(3):  # a connection the server closed as idle: send it again
                try:  # (same message_id: answered once)
                    async with client.post("/v1/chat", json=body) as resp:
                        return bool(resp.status == 200 and (await resp.json()).get("error") is None)
                except aiohttp.ClientConnectionError as exc:
                    resent[0] += 1
                    why = f"{type(exc).__name__}: {exc}"[:80]
                    reasons[why] = reasons.get(why, 0) + 1
                    continue
                except (aiohttp.ClientError, TimeoutError) as exc:  # counted lost
                    why = f"{type(exc).__name__}: {exc}"[:80]
                    reasons[why] = reasons.get(why, 0) + 1
                    return False
            return False

        sampling = asyncio.create_task(sampler.run())
        client0 = time.process_time()
        result = await _people(n, m, send, sampler.cpu)
        client_cpu = time.process_time() - client0
        sampling.cancel()
        sampler.sample()
    result.extra = {"resent": resent[0], "client": client_cpu, "reasons": reasons}
    return result


async def _loop_lag(url: str, workers: int) -> dict[str, dict[str, Any]]:
    """Each worker's `/stats` "loop" (new connections until every worker has answered)."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(50 * workers):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            stats = (await client.get("/stats")).json()
        seen[str(stats.get("instance"))] = stats.get("loop", {})
        if len(seen) >= workers:
            break
    return seen


async def _sim_requests(sim_url: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        stats = (await client.get(f"{sim_url}/sim/stats?timeline=0")).json()
        await client.post(f"{sim_url}/sim/reset")
    return int(stats.get("requests", stats.get("total_requests", 0)))


# --- one run --------------------------------------------------------------------------------


def _figures(result: Result, total: int, bound: float) -> dict[str, float]:
    """One side's throughput, latency and CPU against the upstream bound."""
    return {
        "makespan_s": result.makespan,
        "per_s": total / result.makespan,
        "efficiency": bound / result.makespan,
        "p50_s": _pct(result.latencies, 0.5),
        "p99_s": _pct(result.latencies, 0.99),
        "cpu_ms_per_message": result.cpu_s * 1000 / total,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    n, m, workers = args.conversations, args.messages, args.workers
    limits = REFERENCE if args.limits == "reference" else UNBOUND
    tmp = Path(tempfile.mkdtemp(prefix="livia-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVIA_")}
    sim_port = _free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim_args = [sys.executable, "-m", "livia", "sim", "openai", "--port", str(sim_port)]
    sim_args += ["--latency", args.latency, "--seed", "12"]
    if args.limits == "reference":
        sim_args += ["--max-concurrent", "8", "--rpm", "500", "--rph", "10000"]
    out: dict[str, Any] = {"conversations": n, "messages": m, "workers": workers}
    out.update(latency=args.latency, limits=args.limits, cores=os.cpu_count())
    out["load_before"] = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(_process(sim_args, env, tmp / "sim.log"))
        await _wait_http(f"{sim_url}/v1/models", sim, tmp / "sim.log", 30)

        sim_cpu = _cpu_s(sim.pid)
        base = await baseline(
            sim_url, n, m, REFERENCE["max_concurrent"] if limits is REFERENCE else None
        )
        out["baseline_sim_requests"] = await _sim_requests(sim_url)
        out["baseline_sim_cpu_s"] = _cpu_s(sim.pid) - sim_cpu
        least = await floor(
            sim_url, n, m, REFERENCE["max_concurrent"] if limits is REFERENCE else None
        )
        await _sim_requests(sim_url)  # resets the simulator's counts

        livia_env = {
            **env,
            "OPENAI_API_KEY": "sim",
            "LIVIA_LLM__BASE_URL": f"{sim_url}/v1",
            "LIVIA_STORE__URL": f"sqlite:///{tmp}/livia.db",
            "LIVIA_SERVER__MAX_ACTIVE_CONVERSATIONS": str(max(64, n)),
            "LIVIA_SERVER__MAX_QUEUED": str(max(1000, n * m)),
            **{f"LIVIA_APIS__OPENAI__{k.upper()}": str(v) for k, v in limits.items()},
        }
        database_pid: int | None = None  # SQLite works inside Livia's own processes
        if args.store == "postgres":
            from tests.postgres_server import postgres_server

            pg = stack.enter_context(postgres_server())
            livia_env["LIVIA_STORE__URL"] = pg.new_database()
            database_pid = pg.pid()
        out["store"] = args.store
        if workers > 1 or args.coordination == "redis":
            from tests.redis_server import redis_server

            server = stack.enter_context(redis_server())
            livia_env |= {
                "LIVIA_COORDINATION__BACKEND": "redis",
                "LIVIA_COORDINATION__REDIS_URL": server.url,
            }
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        serve_args = [sys.executable, "-m", "livia", "--log-level", args.log_level, "serve"]
        serve_args += ["--port", str(port), "--workers", str(workers)]
        serve_log = tmp / "serve.log"
        livia = stack.enter_context(_process(serve_args, livia_env, serve_log))
        await _wait_http(f"{url}/readyz", livia, serve_log, 60)
        if workers > 1:  # every worker up (each answers /readyz once its app has started)
            await _loop_lag(url, workers)
        sampler = Sampler(livia.pid)
        sampler.sample()
        idle_rss = dict(sampler.rss_mb)
        sim_cpu = _cpu_s(sim.pid)
        profiler = _profiler(livia.pid, args.profile) if args.profile else None
        database = Sampler(database_pid) if database_pid else None
        database_cpu = database.cpu() if database else 0.0
        lived = await through_livia(url, n, m, sampler)
        out["database_cpu_s"] = (database.cpu() - database_cpu) if database else None
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
            out["profile"] = {"file": args.profile, "top": _profile_top(Path(args.profile))}
        out["livia_sim_cpu_s"] = _cpu_s(sim.pid) - sim_cpu
        out["livia_sim_requests"] = await _sim_requests(sim_url)
        out["loop"] = await _loop_lag(url, workers)
        out["load_after"] = os.getloadavg()[0]
        workers_rss = {
            pid: mb for pid, mb in sampler.rss_mb.items() if workers == 1 or pid != livia.pid
        }
        out["rss_idle_mb"] = (
            max(idle_rss.get(pid, 0.0) for pid in workers_rss) if workers_rss else 0
        )
        out["rss_peak_mb"] = max(workers_rss.values(), default=0.0)
        out["fds_peak"] = max(
            (v for pid, v in sampler.fds.items() if pid in workers_rss), default=0
        )
    total = n * m
    bound = upstream_bound(args.latency, n, m, limits)
    out["bound_s"] = bound
    out["baseline"] = {**_figures(base, total, bound), "failures": base.failures}
    out["floor"] = {**_figures(least, total, bound), "failures": least.failures}
    out["livia"] = {
        **_figures(lived, total, bound),
        "added_p50_ms": (_pct(lived.latencies, 0.5) - _pct(base.latencies, 0.5)) * 1000,
        "added_p99_ms": (_pct(lived.latencies, 0.99) - _pct(base.latencies, 0.99)) * 1000,
        "over_floor_p50_ms": (_pct(lived.latencies, 0.5) - _pct(least.latencies, 0.5)) * 1000,
        "over_floor_p99_ms": (_pct(lived.latencies, 0.99) - _pct(least.latencies, 0.99)) * 1000,
        "mean_s": statistics.fmean(lived.latencies) if lived.latencies else math.nan,
        "lost": lived.failures,
        "resent": lived.extra["resent"],
        "resent_because": lived.extra["reasons"],
        "twice": max(0, out["livia_sim_requests"] - (total - lived.failures)),
        "client_cpu_ms_per_message": lived.extra["client"] * 1000 / total,
    }
    out["logs"] = str(tmp)
    return out


def _profiler(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the serving processes (workers too) into `path` (collapsed stacks)."""
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--subprocesses", "--rate", "250"]
    command += ["--format", "raw", "--output", path, "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _profile_top(path: Path, count: int = 25) -> list[tuple[str, float]]:
    """The functions the samples were in (own time), as shares of all samples."""
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, hits = line.rpartition(" ")
        if not hits.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(hits)
        total += int(hits)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:count]
    return [(name, hits / total) for name, hits in ranked] if total else []


def report(r: dict[str, Any]) -> str:
    b, f, v = r["baseline"], r["floor"], r["livia"]
    total = r["conversations"] * r["messages"]
    lag = r["loop"].values()
    p99 = max((x.get("lag_p99_ms") or 0 for x in lag), default=math.nan)
    worst = max((x.get("lag_worst_ms") or 0 for x in lag), default=math.nan)
    lines = [
        f"{r['conversations']} conversations × {r['messages']} messages, latency {r['latency']}, "
        f"limits {r['limits']}, {r['workers']} worker(s), {r['store']}; {r['cores']} cores, "
        f"load average {r['load_before']:.1f} before, {r['load_after']:.1f} after",
        f"  {'':28s} {'makespan':>9s} {'msg/s':>7s} {'÷bound':>6s} {'p50':>7s} {'p99':>7s} "
        f"{'CPU/msg':>8s}",
        f"  {'upstream bound':28s} {r['bound_s']:8.2f}s {total / r['bound_s']:7.0f}",
        f"  {'baseline (bare openai SDK)':28s} {b['makespan_s']:8.2f}s {b['per_s']:7.0f} "
        f"{b['efficiency']:6.2f} {b['p50_s']:6.2f}s {b['p99_s']:6.2f}s "
        f"{b['cpu_ms_per_message']:6.2f}ms",
        f"  {'floor (aiohttp, no decoding)':28s} {f['makespan_s']:8.2f}s {f['per_s']:7.0f} "
        f"{f['efficiency']:6.2f} {f['p50_s']:6.2f}s {f['p99_s']:6.2f}s "
        f"{f['cpu_ms_per_message']:6.2f}ms",
        f"  {'livia serve over HTTP':28s} {v['makespan_s']:8.2f}s {v['per_s']:7.0f} "
        f"{v['efficiency']:6.2f} {v['p50_s']:6.2f}s {v['p99_s']:6.2f}s "
        f"{v['cpu_ms_per_message']:6.2f}ms",
        f"  livia vs baseline: throughput {b['makespan_s'] / v['makespan_s']:.2f}, added latency "
        f"p50 {v['added_p50_ms']:.0f} ms, p99 {v['added_p99_ms']:.0f} ms; vs the floor: "
        f"throughput {f['makespan_s'] / v['makespan_s']:.2f}, added latency "
        f"p50 {v['over_floor_p50_ms']:.0f} ms, p99 {v['over_floor_p99_ms']:.0f} ms",
        f"  per worker: RSS {r['rss_idle_mb']:.0f} → {r['rss_peak_mb']:.0f} MB peak, fds peak "
        f"{r['fds_peak']}, loop lag p99 {p99:.0f} ms (worst {worst:.0f} ms)",
        f"  lost {v['lost']}, twice {v['twice']}, resent {v['resent']}; "
        f"errors {v['resent_because'] or 'none'}"
        f" (model calls: baseline "
        f"{r['baseline_sim_requests']}, livia {r['livia_sim_requests']}); the simulator's "
        f"CPU per message: {r['baseline_sim_cpu_s'] * 1000 / total:.1f} ms (baseline), "
        f"{r['livia_sim_cpu_s'] * 1000 / total:.1f} ms (livia); the load client's (this process): "
        f"{v['client_cpu_ms_per_message']:.1f} ms"
        + (
            f"; PostgreSQL's: {r['database_cpu_s'] * 1000 / total:.1f} ms"
            if r.get("database_cpu_s") is not None
            else ""
        ),
    ]
    if "profile" in r:
        lines.append(f"  profile of the serving processes ({r['profile']['file']}), own time:")
        lines += [f"    {share:6.1%}  {name}" for name, share in r["profile"]["top"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--conversations", type=int, default=200)
    parser.add_argument("-m", "--messages", type=int, default=3)
    parser.add_argument("--latency", default="uniform:0.5:2", help="the simulator's --latency")
    parser.add_argument("--workers", type=int, default=1, help="livia serve --workers")
    parser.add_argument(
        "--limits",
        choices=("none", "reference"),
        default="none",
        help="model limits: none (never binding) or the reference (8 at once, 500/min)",
    )
    parser.add_argument("--log-level", default="info", help="livia serve's --log-level")
    parser.add_argument(
        "--coordination",
        choices=("memory", "redis"),
        default="memory",
        help="the limits' backend with one worker (more workers always share them in Redis)",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the conversation store: a SQLite file, or a PostgreSQL server started for the run",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--profile", metavar="FILE", help="sample the server with py-spy into FILE (raw stacks)"
    )
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
