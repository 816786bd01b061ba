"""Simulated upstreams: the demo model, and the servers tests and benchmarks run against.

- `SimOpenAI` / `SimOpenAIConfig`: an OpenAI-compatible chat completions server with
  latency, OpenAI's rate limits and 429s, and injected faults (`livia sim openai`).
- `SimMcp` / `SimMcpConfig`: a Zapier-like MCP tool server with latency, a concurrency
  limit and an hourly quota (`livia sim mcp`).

Both run in the current event loop on a real socket::

    async with SimOpenAI(SimOpenAIConfig(requests_per_minute=5)) as sim:
        client = AsyncOpenAI(base_url=sim.url, api_key="x")

The server classes are imported on first use, so importing one light module of this
package (say the Slack simulator) does not load the MCP SDK and aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from livia.sim.latency import (
    FixedLatency,
    Latency,
    LogNormalLatency,
    UniformLatency,
    parse_latency,
)
from livia.sim.limits import SlidingWindow, format_duration, parse_duration
from livia.sim.timeline import Span, Timeline

if TYPE_CHECKING:
    from livia.sim.mcp import SimMcp, SimMcpConfig, SimMcpStats
    from livia.sim.openai import SimOpenAI, SimOpenAIConfig, SimOpenAIStats
    from livia.sim.slack import SimSlack

#: Public name -> module that defines it (imported lazily).
_LAZY = {
    "SimOpenAI": "livia.sim.openai",
    "SimOpenAIConfig": "livia.sim.openai",
    "SimOpenAIStats": "livia.sim.openai",
    "SimMcp": "livia.sim.mcp",
    "SimMcpConfig": "livia.sim.mcp",
    "SimMcpStats": "livia.sim.mcp",
    "SimSlack": "livia.sim.slack",
}

__all__ = [
    "FixedLatency",
    "Latency",
    "LogNormalLatency",
    "SimMcp",
    "SimMcpConfig",
    "SimMcpStats",
    "SimOpenAI",
    "SimOpenAIConfig",
    "SimOpenAIStats",
    "SimSlack",
    "SlidingWindow",
    "Span",
    "Timeline",
    "UniformLatency",
    "format_duration",
    "parse_duration",
    "parse_latency",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
