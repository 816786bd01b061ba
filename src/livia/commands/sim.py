"""`livia sim openai|mcp`: run a simulated upstream until Ctrl-C.

`livia sim openai` serves an OpenAI-compatible model (Livia's demo model) with latency,
rate limits and faults; `livia sim mcp` serves Zapier-like MCP tools with latency, a
concurrency limit and an hourly quota. The first line printed is the base URL to point a
client at, the second how to run Livia against it; counters are at `/sim/stats` on the
same server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from livia.commands.loop import fast_loop_factory
from livia.sim.latency import parse_latency

if TYPE_CHECKING:
    from livia.sim.mcp import SimMcp
    from livia.sim.openai import SimOpenAI

log = logging.getLogger("livia.sim")

#: Seconds between the one-line activity summaries logged while serving.
REPORT_EVERY = 10.0


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    kinds = parser.add_subparsers(dest="upstream", metavar="UPSTREAM", required=True)

    model = kinds.add_parser(
        "openai",
        help="an OpenAI-compatible model (chat completions, streaming, tool calls)",
        description="Serve a simulated OpenAI-compatible model with latency, OpenAI's rate "
        "limits (answered with 429 and OpenAI's headers) and injected faults.",
    )
    _common(model, default_port=8001)
    model.add_argument("--rpm", type=_count, default=0, metavar="N", help="requests per minute")
    model.add_argument("--rph", type=_count, default=0, metavar="N", help="requests per hour")
    model.add_argument("--tpm", type=_count, default=0, metavar="N", help="tokens per minute")
    for flag, what in (
        ("--transcription-concurrency", "audio transcriptions at once"),
        ("--transcription-rpm", "audio transcriptions per minute"),
        ("--images-concurrency", "image generations at once"),
        ("--images-rpm", "image generations per minute"),
    ):
        model.add_argument(flag, type=_count, default=0, metavar="N", help=what)
    for flag, what in (
        ("--fail-rate", "answered 500/503"),
        ("--timeout-rate", "left hanging until the client gives up"),
        ("--drop-rate", "whose connection is closed without an answer"),
    ):
        model.add_argument(
            flag, type=_rate, default=0.0, metavar="P", help=f"share of requests {what}"
        )
    model.add_argument(
        "--hang-max",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="longest a hanging request waits before its connection is dropped (default 600)",
    )
    model.add_argument(
        "--no-enforce",
        dest="enforce",
        action="store_false",
        help="count requests over a limit but serve them anyway",
    )

    tools = kinds.add_parser(
        "mcp",
        help="Zapier-like MCP tools over streamable HTTP",
        description="Serve simulated Zapier-like MCP tools (create_task, search_files, "
        "schedule_event, send_email) with latency, a concurrency limit and an hourly quota.",
    )
    _common(tools, default_port=8002)
    tools.add_argument(
        "--quota-per-hour",
        type=_count,
        default=0,
        metavar="N",
        help="tool calls allowed per hour (0: no quota)",
    )


def _common(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=_port, default=default_port, help=f"port (default {default_port}; 0: any)"
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default="0",
        metavar="SPEC",
        help="seconds per request, or uniform:LOW:HIGH, or lognormal:MEDIAN:P99 (default 0)",
    )
    parser.add_argument(
        "--max-concurrent", type=_count, default=0, metavar="N", help="requests at once (0: any)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (or SIGTERM); returns the exit code."""
    # uvicorn (under the MCP simulator) logs every start and stop at INFO.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        sim = _build(args)
    except ValueError as exc:
        print(f"livia sim {args.upstream}: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
            runner.run(_serve(sim, args.host, args.port, mcp=args.upstream == "mcp"))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(
            f"livia sim {args.upstream}: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    log.info("stopped")
    return 0


def _build(args: argparse.Namespace) -> SimOpenAI | SimMcp:
    """The simulator the options describe (`ValueError` if they do not fit together).

    Imported here, not at the top, so `livia --help` does not load aiohttp and the MCP SDK.
    """
    if args.upstream == "openai":
        from livia.sim.media import SimEndpointLimits
        from livia.sim.openai import SimOpenAI, SimOpenAIConfig

        return SimOpenAI(
            SimOpenAIConfig(
                latency=args.latency,
                max_concurrent=args.max_concurrent,
                requests_per_minute=args.rpm,
                requests_per_hour=args.rph,
                tokens_per_minute=args.tpm,
                fail_rate=args.fail_rate,
                timeout_rate=args.timeout_rate,
                drop_rate=args.drop_rate,
                seed=args.seed,
                hang_max=args.hang_max,
                enforce_limits=args.enforce,
                transcription=SimEndpointLimits(
                    args.transcription_concurrency, args.transcription_rpm
                ),
                images=SimEndpointLimits(args.images_concurrency, args.images_rpm),
            )
        )
    from livia.sim.mcp import SimMcp, SimMcpConfig

    return SimMcp(
        SimMcpConfig(
            latency=args.latency,
            max_concurrent=args.max_concurrent,
            quota_per_hour=args.quota_per_hour,
            seed=args.seed,
        )
    )


async def _serve(sim: SimOpenAI | SimMcp, host: str, port: int, *, mcp: bool = False) -> None:
    """Run `sim` until cancelled or SIGTERM, logging a summary when something changed."""
    url = await sim.start(host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    print(url, flush=True)
    print(f"point Livia at it: {livia_hint(url, mcp=mcp)}", flush=True)
    print(f"stats: {url.rsplit('/', 1)[0]}/sim/stats   (Ctrl-C to stop)", flush=True)
    last: tuple[Any, ...] = ()
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), REPORT_EVERY)
            summary = _summary(sim.snapshot(timeline=False))
            if summary[0] != last:
                last = summary[0]
                log.info("%s", summary[1])
    finally:
        await sim.stop()


def livia_hint(url: str, *, mcp: bool) -> str:
    """The command that runs Livia against the simulator at `url`."""
    if not mcp:
        return f"LIVIA_LLM__BASE_URL={url} livia serve"
    servers = json.dumps([{"name": "sim", "url": url}])
    return (
        f"LIVIA_MCP__SERVERS={shlex.quote(servers)} livia serve   "
        f'(or in the config: [[mcp.servers]] name = "sim", url = "{url}")'
    )


def _summary(stats: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(what changed, a one-line summary) of a `/sim/stats` snapshot."""
    keys = [
        key
        for key in (
            "requests",
            "tool_calls",
            "ok",
            "rate_limited",
            "over_limit",
            "failed",
            "dropped",
            "timed_out",
            "errors",
            "in_flight",
            "peak_concurrency",
        )
        if key in stats
    ]
    return tuple(stats[k] for k in keys), " ".join(f"{k}={stats[k]}" for k in keys)


# --- option types: a bad value is a one-line argparse error, exit 2 -------------------

_Number = TypeVar("_Number", int, float)


def _number(kind: Callable[[str], _Number], text: str, expected: str) -> _Number:
    """`text` read by `kind` (int or float); an argparse error saying what was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _count(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _rate(text: str) -> float:
    value = _number(float, text, "a probability")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(float, text, "seconds")
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600, got {text}")
    return value


def _latency(text: str) -> str:
    try:
        parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
