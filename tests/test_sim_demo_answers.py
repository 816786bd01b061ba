"""Demo mode answers the obvious questions sensibly (issue 11, bug 3 and 4).

Livia runs as `make run` runs it without a key (`run_livia` in demo mode: the simulated
model and tool server on real sockets, the real agent and manager), and is asked what a
newcomer asks first: the web page's suggestion chips, "what's on my calendar", and a task
when the tool quota is spent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from livia.agent import TextDelta, ToolFinished, ToolStarted, TurnDone, TurnEvent
from livia.app import Livia, run_livia
from livia.config import ApiConfig, Settings, StoreConfig

CHAT_PAGE = Path(__file__).parents[1] / "src" / "livia" / "channels" / "static" / "chat.html"
#: What the generic fallback says: none of it may answer a suggestion chip.
FILLER = ("good question", "Here is a short take", "You asked:", "Thanks for your message")


def chips() -> list[str]:
    """The suggestion chips of the web chat page, as it ships."""
    found = re.findall(r'<button[^>]*class="chip"[^>]*>(.*?)</button>', CHAT_PAGE.read_text())
    assert found, "no suggestion chips found on the chat page"
    return found


@pytest.fixture
async def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Livia]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(
        store=StoreConfig(url=f"sqlite:///{tmp_path / 'livia.db'}"),
        apis={"zapier": ApiConfig(requests_per_hour=2)},
    )
    assert settings.demo_mode
    async with run_livia(settings) as livia:
        yield livia


async def ask(livia: Livia, text: str, key: str = "ann") -> list[TurnEvent]:
    return [event async for event in livia.agent.respond([], text, key=key)]


def reply(events: list[TurnEvent]) -> str:
    done = events[-1]
    assert isinstance(done, TurnDone) and done.error is None, done
    assert done.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    return done.text


def tools_called(events: list[TurnEvent]) -> list[str]:
    return [e.tool for e in events if isinstance(e, ToolStarted)]


async def test_every_suggestion_chip_gets_a_real_answer(demo: Livia) -> None:
    # the page's chips as they ship, and the ones the issue names (the Tokyo chip was one)
    asked = dict.fromkeys(
        [
            *chips(),
            "What can you do?",
            "What time is it in Tokyo?",
            "Draft a short status update for my team",
        ]
    )
    answers = {question: await ask(demo, question) for question in asked}
    for question, events in answers.items():
        text = reply(events)
        assert not any(filler in text for filler in FILLER), (question, text)
        if question.startswith("Create a task"):
            assert tools_called(events) == ["zapier.create_task"], (question, text)
            assert "Task created in Todoist" in text
        else:
            assert tools_called(events) == [], (question, text)  # none of these needs a tool

    can_do = reply(answers["What can you do?"])
    for tool in demo.agent.tools:  # the tools this deployment really has, and only those
        assert tool in can_do
    assert "demo model" in can_do
    assert "time" not in can_do.lower()  # no time tool is claimed

    tokyo = reply(answers["What time is it in Tokyo?"])
    now = datetime.now(UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    clocks = {f"{now + timedelta(minutes=d):%H:%M}" for d in (-1, 0, 1)}
    assert "Tokyo (Asia/Tokyo, UTC+09:00)" in tokyo
    assert any(f"It's {clock} on" in tokyo for clock in clocks), tokyo
    assert "tool" not in tokyo.lower()

    status = reply(answers["Draft a short status update for my team"])
    assert "status update" in status and "**Done:**" in status and "**Blockers" in status


async def test_whats_on_my_calendar_lists_events_and_creates_none(demo: Livia) -> None:
    scheduled = await ask(demo, "Schedule a meeting with Anna tomorrow")
    assert tools_called(scheduled) == ["zapier.schedule_event"]
    listed = await ask(demo, "what's on my calendar")
    text = reply(listed)
    assert tools_called(listed) == ["zapier.list_events"]
    assert "events in Google Calendar" in text and "Team stand-up" in text
    assert "Meeting with Anna" in text  # the one just scheduled is on it too
    assert "Event scheduled" not in text and "What's on my calendar" not in text
    assert demo.simulators["mcp"].stats.by_tool == {"schedule_event": 1, "list_events": 1}
    # and said the way the tool cards say it
    assert "zapier.list_events" in text and "zapier__" not in text


async def test_a_spent_tool_quota_reads_as_a_plain_sentence(demo: Livia) -> None:
    """With the hour's tool calls spent, the reply and the tool card say when tools are
    back, in words for the user; the instructions meant for the model never show."""
    for task in ("call Bob", "email Carol"):
        assert tools_called(await ask(demo, f"Create a task to {task}")) == ["zapier.create_task"]
    events = await ask(demo, "Create a task to book the venue")
    text = reply(events)
    card = next(e for e in events if isinstance(e, ToolFinished))
    pattern = r"Zapier tools are out of quota until \d\d:\d\d UTC \(in (59|60|61) min\)"
    assert re.fullmatch(pattern, card.summary), card.summary
    assert re.search(pattern, text), text
    for leaked in ("ERROR", "Tell the user", "offer to help another way", "It was not run"):
        assert leaked not in text, text
    assert demo.simulators["mcp"].stats.tool_calls == 2  # the third never left Livia
