"""Latency distributions for the simulators: fixed, uniform or log-normal.

A spec string picks one (the `--latency` option): ``"2"`` or ``"fixed:2"`` is always two
seconds, ``"uniform:0.5:1.5"`` is uniform between the bounds, and ``"lognormal:1.5:6"`` is
log-normal with a median of 1.5 s and a 99th percentile of 6 s (real model latencies have
that long right tail). Every sample is capped at `MAX_LATENCY`, so no simulated wait is
unbounded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: No sampled latency exceeds this many seconds.
MAX_LATENCY = 600.0

#: The standard normal quantile of 0.99: p99 = median * exp(Z99 * sigma).
_Z99 = 2.3263478740408408


@runtime_checkable
class Latency(Protocol):
    """Something that draws a delay in seconds from a random generator."""

    def sample(self, rng: random.Random) -> float:
        """One delay, in seconds, between 0 and `MAX_LATENCY`."""
        ...


@dataclass(frozen=True, slots=True)
class FixedLatency:
    """Always the same delay."""

    seconds: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds("latency", self.seconds)

    def sample(self, rng: random.Random) -> float:
        return self.seconds

    def __str__(self) -> str:
        return f"{self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """A delay drawn uniformly between `low` and `high` seconds."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_seconds("uniform low", self.low)
        _check_seconds("uniform high", self.high)
        if self.low > self.high:
            raise ValueError(f"uniform latency: low ({self.low:g}) is above high ({self.high:g})")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return f"uniform {self.low:g}-{self.high:g}s"


@dataclass(frozen=True, slots=True)
class LogNormalLatency:
    """A log-normal delay given by its median and 99th percentile (both in seconds)."""

    median: float
    p99: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median) and self.median > 0):
            raise ValueError(f"lognormal latency: median must be above 0, got {self.median:g}")
        _check_seconds("lognormal p99", self.p99)
        if self.p99 < self.median:
            raise ValueError(
                f"lognormal latency: p99 ({self.p99:g}) must not be below the median "
                f"({self.median:g})"
            )

    @property
    def sigma(self) -> float:
        """The standard deviation of the underlying normal distribution."""
        return math.log(self.p99 / self.median) / _Z99

    def sample(self, rng: random.Random) -> float:
        return min(MAX_LATENCY, self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)))

    def __str__(self) -> str:
        return f"lognormal median {self.median:g}s p99 {self.p99:g}s"


def parse_latency(spec: str | float | Latency) -> Latency:
    """Turn a number of seconds or a spec string into a `Latency`.

    Raises `ValueError` with a message saying what a valid spec looks like.
    """
    if isinstance(spec, Latency):
        return spec
    if isinstance(spec, int | float):
        return FixedLatency(float(spec))
    text = spec.strip().lower()
    kind, _, rest = text.partition(":") if ":" in text else ("fixed", "", text)
    args = rest.split(":") if rest else []
    try:
        numbers = [float(a) for a in args]
    except ValueError:
        raise ValueError(_usage(spec)) from None
    if kind == "fixed" and len(numbers) == 1:
        return FixedLatency(numbers[0])
    if kind == "uniform" and len(numbers) == 2:
        return UniformLatency(numbers[0], numbers[1])
    if kind in ("lognormal", "lognorm") and len(numbers) == 2:
        return LogNormalLatency(numbers[0], numbers[1])
    raise ValueError(_usage(spec))


def _usage(spec: object) -> str:
    return (
        f"invalid latency {spec!r}: use seconds (e.g. 2), uniform:LOW:HIGH "
        "or lognormal:MEDIAN:P99 (e.g. lognormal:1.5:6)"
    )


def _check_seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= MAX_LATENCY):
        raise ValueError(f"{name} must be between 0 and {MAX_LATENCY:g} seconds, got {value:g}")
