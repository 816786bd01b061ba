"""Shared fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from livia.agent.events import TextDelta, TurnDone, TurnEvent
from livia.conversations.types import ChatMessage

# --- conversations: a deterministic responder (the dispatcher's input, not a mock) --------


@dataclass
class EchoResponder:
    """Answers ``echo: <text>`` after `delay` s (and after `gate` opens), recording each call.

    `fail_on` texts raise inside the turn, to exercise the apology path.
    """

    delay: float = 0.0
    gate: asyncio.Event | None = None
    fail_on: frozenset[str] = frozenset()
    calls: list[tuple[str, str, list[ChatMessage]]] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        self.calls.append((key, text, list(history)))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if text in self.fail_on:
                raise RuntimeError("the responder broke")
            yield TextDelta("echo: ")
            yield TextDelta(text)
            yield TurnDone(f"echo: {text}")
        finally:
            self.active -= 1

    def texts(self) -> list[str]:
        """The texts the responder was asked about, in call order."""
        return [text for _, text, _ in self.calls]


@pytest.fixture
def echo_responder() -> EchoResponder:
    """A fresh `EchoResponder` with no delay."""
    return EchoResponder()
