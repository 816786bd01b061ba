"""Errors the manager raises: each says what happened and when to try again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class CapacityExhausted(Exception):
    """The upstream has no capacity within the caller's deadline.

    ``retry_after`` is the number of seconds until capacity returns (a lower bound), and
    ``available_at`` the wall-clock time that corresponds to it.
    """

    def __init__(self, api: str, reason: str, retry_after: float) -> None:
        self.api = api
        self.reason = reason
        self.retry_after = max(0.0, float(retry_after))
        self.available_at = datetime.now(UTC) + timedelta(seconds=self.retry_after)
        super().__init__(
            f"{api}: {reason}; available again at "
            f"{self.available_at.astimezone().strftime('%H:%M:%S')} "
            f"(in {self.retry_after:.0f} s)"
        )


class CoordinationUnavailable(CapacityExhausted):
    """The shared limits (Redis) cannot be reached and `on_outage = "wait"`: no call may
    start until they answer again. The reason names the coordination service, not a quota."""


class CircuitOpen(CapacityExhausted):
    """The upstream failed too often in a row; calls fail fast until the cool-off ends."""


class UnknownApi(KeyError):
    """No policy is declared for this upstream name."""

    def __init__(self, api: str, known: list[str]) -> None:
        self.api = api
        self.known = known
        super().__init__(f"unknown upstream {api!r}; known upstreams: {', '.join(known) or 'none'}")

    def __str__(self) -> str:
        return str(self.args[0])
