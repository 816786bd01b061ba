"""What the simulated servers share: config checks and counters' timeline bookkeeping.

`SimConfigMixin` gives a frozen config dataclass (with `latency` and limit fields) its
common checks and `latency_model`; `SimStatsMixin` gives a stats dataclass (counter
fields plus a `timeline` field) `in_flight`, `peak_concurrency`, `reset()` and
`as_dict()`, the `/sim/stats` JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from livia.sim.latency import Latency, parse_latency
from livia.sim.timeline import Timeline


class SimConfigMixin:
    """For a frozen config dataclass with a `latency` field (seconds or a spec)."""

    latency: Latency | float | str

    def _check_limits(self, *names: str) -> None:
        """From `__post_init__`: parse `latency` and check the limits named."""
        object.__setattr__(self, "latency", parse_latency(self.latency))
        for name in names:
            check_count(name, getattr(self, name))

    @property
    def latency_model(self) -> Latency:
        """`latency` as a `Latency` (it always is one after construction)."""
        return parse_latency(self.latency)


def zero_counts(kinds: tuple[str, ...]) -> Callable[[], dict[str, int]]:
    """A `default_factory` for a fresh {kind: 0} for each of `kinds`."""
    return lambda: dict.fromkeys(kinds, 0)


class SimStatsMixin:
    """For a dataclass of counters whose field `timeline` is the server's `Timeline`.

    Every field but `timeline` is a counter (a number, or a dict of numbers) that
    `reset()` sets back to its default.
    """

    timeline: Timeline

    @property
    def in_flight(self) -> int:
        """Requests (tool calls) running now."""
        return self.timeline.in_flight

    @property
    def peak_concurrency(self) -> int:
        """The most requests (tool calls) that ran at once."""
        return self.timeline.peak

    def _counter_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name != "timeline"]  # type: ignore[arg-type]

    def reset(self) -> None:
        """Zero every counter and start a new timeline (running requests stay counted)."""
        fresh = type(self)()
        for name in self._counter_names():
            setattr(self, name, getattr(fresh, name))
        self.timeline.reset()

    def _derived(self) -> dict[str, Any]:
        """Figures computed from the counters, listed in `as_dict` after them."""
        return {}

    def as_dict(self, *, timeline: bool = True) -> dict[str, Any]:
        """The `/sim/stats` JSON (without the per-request timeline if `timeline` is False)."""
        tl = self.timeline
        out: dict[str, Any] = {}
        for name in self._counter_names():
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, dict) else value
        out.update(self._derived())
        out["in_flight"] = tl.in_flight
        out["peak_concurrency"] = tl.peak
        out["t0"] = tl.t0
        out["started_at"] = tl.started_at
        out["elapsed"] = round(tl.clock() - tl.t0, 6)
        if timeline:
            out["timeline"] = tl.spans_json()
            out["timeline_dropped"] = tl.spans_dropped
            out["inflight"] = [list(point) for point in tl.series()]
        return out


def check_count(name: str, value: object) -> None:
    """`ValueError` unless `value` is 0 (a limit that is off) or a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be 0 (off) or a positive whole number, got {value!r}")


def wants_timeline(query: Mapping[str, str]) -> bool:
    """Whether a `GET /sim/stats` asks for the timeline (`?timeline=0` leaves it out)."""
    return query.get("timeline", "1").lower() not in ("0", "false", "no")
