"""The demo model's brain: canned but plausible replies, and tool calls when asked.

Given an OpenAI chat request (messages, tools, tool_choice) it decides what a helpful
assistant would answer, deterministically from the text so that each user's message gets
its own reply:

- a tool call, when an offered tool fits what the last user message asks for (words such
  as "task", "email", "calendar", "file", "time" in both the request and the tool's name
  or description; a question such as "what's on my calendar" prefers a tool that reads,
  "schedule a meeting" one that writes), with arguments built from the tool's JSON schema;
- after tool results, a reply that reports the results' content, or for a failed tool
  what failed, in words for the user (instructions meant for the model are left out);
- the questions people ask first, answered properly: what it can do (the offered tools),
  the time in a city or zone (from the clock; no tool is claimed), a draft when asked for
  one;
- otherwise plain text: a short quote of the user's last message, then a few sentences
  about its topic (several sentences, so streaming visibly streams).

Token counts are estimated at about four characters per token, as OpenAI's rule of thumb.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
import zlib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

#: Extra tokens each message costs (role and separators), as OpenAI counts them.
_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asks the client to make; `arguments` is a JSON object string."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model answers: text, or tool calls (then `text` is None)."""

    text: str | None
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)
    #: The text was cut at the request's output-token limit.
    truncated: bool = False

    @property
    def finish_reason(self) -> str:
        if self.tool_calls:
            return "tool_calls"
        return "length" if self.truncated else "stop"

    def limited_to(self, max_tokens: int | None) -> Reply:
        """This reply cut to at most `max_tokens` (about four characters each)."""
        if not max_tokens or self.tool_calls or self.text is None:
            return self
        if estimate_tokens(self.text) <= max_tokens:
            return self
        return Reply(self.text[: max_tokens * 4], truncated=True)


def estimate_tokens(text: str) -> int:
    """About four characters per token; at least one for any non-empty text."""
    return math.ceil(len(text) / 4) if text else 0


def prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> int:
    """Estimated tokens of a request's input: every message plus the tool definitions."""
    total = 3
    for message in messages:
        total += _PER_MESSAGE + estimate_tokens(content_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            total += estimate_tokens(json.dumps(call, separators=(",", ":")))
    if tools:
        total += estimate_tokens(json.dumps(list(tools), separators=(",", ":")))
    return total


def completion_tokens(reply: Reply) -> int:
    """Estimated tokens of a reply."""
    if reply.tool_calls:
        return sum(3 + estimate_tokens(c.name + c.arguments) for c in reply.tool_calls)
    return max(1, estimate_tokens(reply.text or ""))


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, or a list of parts with "text"."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        ).strip()
    return ""


def compose_reply(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
) -> Reply:
    """What the demo model answers to this conversation."""
    user_text = _last_user_text(messages)
    results = _trailing_tool_results(messages)
    if results:
        return Reply(_report_results(user_text, results))
    functions = [t["function"] for t in tools or () if _is_function_tool(t)]
    drafting = _DRAFT.match(user_text) is not None
    tool = None if drafting else _pick_tool(user_text, functions, tool_choice)
    if tool is not None:
        args = arguments_for(tool.get("parameters") or {}, user_text)
        call = ToolCall(
            id="call_" + uuid.uuid4().hex[:24],
            name=str(tool["name"]),
            arguments=json.dumps(args, separators=(",", ":"), ensure_ascii=False),
        )
        return Reply(None, (call,))
    if _CAPABILITIES.search(user_text):
        return Reply(capabilities_text(functions))
    if _TIME_QUESTION.search(user_text):
        return Reply(time_text(user_text))
    if drafting:
        return Reply(draft_text(user_text))
    return Reply(chat_text(user_text))


def _vocab(words: str) -> frozenset[str]:
    """A set of words written as one space-separated string."""
    return frozenset(words.split())


# --- plain text ------------------------------------------------------------------------

_GREETINGS = _vocab(
    "hi hello hey hiya howdy yo hola bonjour morning evening afternoon good there livia"
)
_STOP = _vocab(
    """a about above after again all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers him his how i if in into is it its
    itself just me more most my no nor not now of off on once only or other our out over
    own please same she should so some such than that the their them then there these they
    this those through to too under until up very was we were what when where which while
    who whom why will with would you your yours tell show give explain know want need like
    think make help thanks thank hello hi hey really maybe something anything things thing
    best good great way ways get let lets could would whats what's i'm it's don't
    summarise summarize describe write"""
)

_OPENERS = (
    'You asked: "{quote}".',
    '"{quote}" - good question.',
    'Thanks for your message: "{quote}".',
    'About "{quote}":',
    'Re: "{quote}".',
)
_MIDDLES = (
    "Here is a short take on {topic}: start small, check what works, then build on it.",
    "When it comes to {topic}, the simplest approach is usually the best place to start.",
    "There are a few angles on {topic} worth considering, and I'm happy to dig into any of them.",
    "{Topic} is worth thinking through step by step, one question at a time.",
    "A good first step with {topic} is to write down what you already know and what is still open.",
)
_CLOSERS = (
    "I'm Livia's built-in demo model, so this answer is simulated; connect a real model "
    "for a proper one.",
    "This reply comes from the demo model; set OPENAI_API_KEY to talk to a real one.",
    "Want me to create a task, schedule an event or send an email about it? Just ask.",
    "I can also search your files or set a reminder if that helps.",
)


def chat_text(user_text: str) -> str:
    """A short, friendly, multi-sentence reply that quotes and follows the user's text."""
    quote = _quote(user_text)
    if not quote:
        return (
            "Hello! I'm Livia, running on the built-in demo model. Ask me anything, or ask "
            "me to create a task, schedule an event or send an email."
        )
    h = zlib.crc32(user_text.encode("utf-8"))
    words = {w.lower() for w in _words(user_text)}
    if words and words <= _GREETINGS:
        return (
            f'"{quote}" - hello! I\'m Livia, running on the built-in demo model. '
            "Ask me anything, or ask me to create a task, schedule an event or send an email."
        )
    topic = _topic(user_text)
    middle = _MIDDLES[(h >> 8) % len(_MIDDLES)].format(topic=topic, Topic=_capitalize(topic))
    return " ".join(
        (
            _OPENERS[h % len(_OPENERS)].format(quote=quote),
            middle,
            _CLOSERS[(h >> 16) % len(_CLOSERS)],
        )
    )


def _words(text: str) -> list[str]:
    """The words of `text`, in any script (letters, inner apostrophes and hyphens)."""
    return re.findall(r"[^\W\d_](?:[\w'-]*\w)?", text)


def _quote(text: str, limit: int = 60) -> str:
    """The text on one line, cut at a word boundary to at most `limit` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut.rstrip(",;:.") + "..."


def _topic(text: str) -> str:
    """The one or two most telling words: proper nouns first, then the longest words."""
    words = _words(text)
    scored = []
    for i, word in enumerate(words):
        if word.lower() in _STOP or len(word) < 3:
            continue
        score = len(word) + (6 if i > 0 and word[0].isupper() else 0)
        scored.append((score, i, word))
    best = sorted(sorted(scored, reverse=True)[:2], key=lambda s: s[1])
    return " ".join(w for _, _, w in best) or "that"


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- tool results ----------------------------------------------------------------------


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _trailing_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(tool name, result text) of the tool messages that end the conversation."""
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping):
                fn = call.get("function") or {}
                names[str(call.get("id", ""))] = str(fn.get("name", "the tool"))
    results: list[tuple[str, str]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        name = names.get(str(message.get("tool_call_id", "")), "the tool")
        results.append((name, content_text(message.get("content"))))
    results.reverse()
    return results


_FAILURE = re.compile(r"\b(error|failed|failure|exceeded|quota|too many|unavailable)\b", re.I)
#: A sentence (or a clause after ";") addressed to the model rather than to the user.
_INSTRUCTION = re.compile(
    r"^(?:tell|ask|offer|let|inform|remind|explain to|apologi[sz]e|do not|don't|never|then"
    r"|please tell|you should|you may|suggest)\b",
    re.I,
)


def for_the_user(text: str) -> str:
    """A tool result's text as the user may read it: without the `ERROR:` tag and without
    the sentences that tell the model what to do ("Tell the user ...")."""
    text = " ".join(text.split()).removeprefix("ERROR:").strip()
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        clauses = [c for c in re.split(r";\s+", sentence) if not _INSTRUCTION.match(c.strip())]
        if clauses:
            kept.append("; ".join(clauses).rstrip(";, "))
    out = " ".join(kept).strip()
    if out and out[-1] not in ".!?":
        out += "."
    first = out.split(" ", 1)[0]
    return out if "." in first.rstrip(".:") or "_" in first else _capitalize(out)


def _tool_label(name: str) -> str:
    """How people see a tool: `zapier.create_task` for the function `zapier__create_task`."""
    server, sep, tool = name.partition("__")
    return f"{server}.{tool}" if sep and server and tool else name


def _report_results(user_text: str, results: Sequence[tuple[str, str]]) -> str:
    quote = _quote(user_text)
    asked = f' for "{quote}"' if quote else ""
    parts = []
    failed = False
    for name, text in results:
        label = _tool_label(name)
        if text.lstrip().startswith("ERROR") or _FAILURE.search(text):
            failed = True
            parts.append(
                f"Sorry, I couldn't do that with {label}: {_quote(for_the_user(text), 400)}"
            )
        else:
            excerpt = _quote(text, 400) or "(no output)"
            parts.append(f"Done: I used {label}{asked}. It returned: {excerpt}")
    if failed:
        parts.append("Is there anything else I can help with in the meantime?")
    else:
        parts.append("Anything else I can do?")
    return " ".join(parts)


# --- questions with proper answers -----------------------------------------------------

_CAPABILITIES = re.compile(
    r"\b(?:what (?:can|could) you (?:do|help)|what do you do|what are you (?:able|good)"
    r"|how (?:can|could) you help|what can i (?:ask|do here)|what tools|which tools"
    r"|who are you|what are you\b|what is livia|help me get started)|^\s*/?help\W*$",
    re.I,
)


def capabilities_text(functions: Sequence[Mapping[str, Any]]) -> str:
    """What the demo can do: the tools offered in this request, each in a line, honestly."""
    lines = [
        "I'm Livia, here running on the built-in demo model: my chat answers are simulated, "
        "but the tools below are real calls (to simulated services)."
    ]
    if functions:
        lines.append("")
        lines.append("With my tools I can:")
        for fn in functions:
            label, what = _describe_tool(fn)
            lines.append(f"- {what} ({label})")
        lines.append("")
        lines.append(
            'Try "Create a task to call Bob tomorrow", "What\'s on my calendar?" or '
            '"Search my files for the Q3 budget".'
        )
    else:
        lines.append("No tools are connected right now, so I can only chat.")
    lines.append("Set OPENAI_API_KEY to talk to a real model.")
    return "\n".join(lines)


def _describe_tool(fn: Mapping[str, Any]) -> tuple[str, str]:
    """(label, first sentence of the description) of a function tool."""
    label = _tool_label(str(fn.get("name", "")))
    description = " ".join(str(fn.get("description") or "").split())
    if (bracketed := re.match(r"^\[([^\]]+)\]\s*", description)) is not None:
        label, description = bracketed.group(1), description[bracketed.end() :]
    first = re.split(r"(?<=\.)\s", description, maxsplit=1)[0].rstrip(".")
    return label, (first or label.replace("_", " "))


_TIME_QUESTION = re.compile(
    r"\b(?:what(?:'s|\u2019s| is)? (?:the )?(?:current |local )?time|time is it"
    r"|current time|time (?:now )?in\b|what(?:'s|\u2019s| is) (?:the )?date|what day is)",
    re.I,
)
#: Places people name that are not the last part of an IANA zone name.
_PLACES = {
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "silicon valley": "America/Los_Angeles",
    "boston": "America/New_York",
    "washington": "America/New_York",
    "miami": "America/New_York",
    "atlanta": "America/New_York",
    "dallas": "America/Chicago",
    "houston": "America/Chicago",
    "beijing": "Asia/Shanghai",
    "mumbai": "Asia/Kolkata",
    "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "bangalore": "Asia/Kolkata",
    "bengaluru": "Asia/Kolkata",
    "munich": "Europe/Berlin",
    "frankfurt": "Europe/Berlin",
    "milan": "Europe/Rome",
    "barcelona": "Europe/Madrid",
    "geneva": "Europe/Zurich",
    "kyiv": "Europe/Kyiv",
    "osaka": "Asia/Tokyo",
    "japan": "Asia/Tokyo",
    "india": "Asia/Kolkata",
    "china": "Asia/Shanghai",
    "france": "Europe/Paris",
    "germany": "Europe/Berlin",
    "uk": "Europe/London",
    "england": "Europe/London",
}


def _zone_names() -> dict[str, str]:
    """City (lower case, spaces) -> IANA zone, from the zones this machine knows."""
    try:
        zones = zoneinfo.available_timezones()
    except Exception:  # no tz database: UTC only
        zones = set()
    names: dict[str, str] = {}
    for zone in sorted(zones):
        if "/" in zone and not zone.startswith(("Etc/", "SystemV/", "US/")):
            names.setdefault(zone.rsplit("/", 1)[1].replace("_", " ").lower(), zone)
    return names


_ZONES = functools.cache(_zone_names)


def zone_in(text: str) -> str | None:
    """The time zone a request names: an IANA name, UTC, or a city or country."""
    if (explicit := _ZONE.search(text)) is not None:
        return explicit.group(0)
    words = [w.lower() for w in _words(text)]
    for size in (3, 2, 1):
        for i in range(len(words) - size + 1):
            place = " ".join(words[i : i + size])
            if place in _PLACES:
                return _PLACES[place]
            if place not in _STOP and (zone := _ZONES().get(place)) is not None:
                return zone
    return None


def time_text(user_text: str, *, now: datetime | None = None) -> str:
    """The time (and date) now, in the zone the request names, else UTC; from the clock."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    zone = zone_in(user_text)
    utc_line = f"{now:%H:%M} UTC"
    if zone is None or zone == "UTC":
        return f"It's {now:%H:%M} UTC on {now:%A} {now.day} {now:%B %Y}."
    try:
        local = now.astimezone(zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return (
            f"I don't know the time zone {zone}, so here is UTC: it's {utc_line} on "
            f"{now:%A} {now.day} {now:%B %Y}."
        )
    place = zone.rsplit("/", 1)[-1].replace("_", " ")
    offset = local.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    day = f"{local:%A} {local.day} {local:%B}"
    return f"It's {local:%H:%M} on {day} in {place} ({zone}, {offset}); that is {utc_line}."


_DRAFT = re.compile(
    r"^\s*(?:(?:please|hey|hi|ok|okay|livia)\b[,!\s]*)*(?:(?:can|could|would) you\s+)?"
    r"(?:please\s+)?draft\b",
    re.I,
)


def draft_text(user_text: str, *, now: datetime | None = None) -> str:
    """A short draft of what was asked for (a status update, an email, a note), to fill in."""
    today = (now or datetime.now(UTC)).astimezone(UTC)
    asked = re.sub(r"^.*?\bdraft\b\s*", "", user_text, count=1, flags=re.I)
    what = _subject(asked)
    lowered = asked.lower()
    if "status" in lowered or "update" in lowered or "report" in lowered:
        audience = "the team" if "team" in lowered else "everyone"
        return "\n".join(
            (
                f"Here's a draft status update for {audience} to fill in:",
                "",
                f"**Status update, {today.day} {today:%B %Y}**",
                "- **Done:** what shipped or was decided since the last update",
                "- **In progress:** what is being worked on, and by whom",
                "- **Next:** what comes after, with dates where you have them",
                "- **Blockers / help needed:** none right now",
                "",
                "Tell me what you worked on and I'll fill it in.",
            )
        )
    if "email" in lowered or "mail" in lowered or "message" in lowered:
        topic = _topic(what)
        return "\n".join(
            (
                "Here's a draft to adapt:",
                "",
                f"Subject: {_capitalize(topic)}",
                "",
                "Hi,",
                "",
                f"A quick note about {topic}: here is where things stand, and what I need "
                "from you.",
                "",
                "Thanks,",
                "",
                "Say who it goes to and I can send it for you.",
            )
        )
    return (
        f'Here\'s a first draft of "{what or "that"}": start with the one thing the reader '
        "must know, then the details, then what you need from them. Give me the key points "
        "and I'll write it out in full."
    )


# --- choosing a tool -------------------------------------------------------------------

#: Request words that ask for an action, and the tool words that offer it.
_INTENTS: dict[str, frozenset[str]] = {
    "task": _vocab("task tasks todo to-do todos remind reminder reminders"),
    "email": _vocab("email emails e-mail mail gmail inbox"),
    "event": _vocab(
        "schedule event events calendar meeting meetings appointment appointments invite agenda"
    ),
    "file": _vocab("file files search document documents doc docs drive folder"),
    "time": _vocab("time clock timezone"),
}
#: Tool-name words too generic to show intent on their own.
_GENERIC = _vocab("get set create add new make send list find run do the a an of to for")


def _is_function_tool(tool: Any) -> bool:
    return (
        isinstance(tool, Mapping)
        and tool.get("type", "function") == "function"
        and isinstance(tool.get("function"), Mapping)
        and bool(tool["function"].get("name"))
    )


def _name_words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}


def tool_score(user_text: str, tool: Mapping[str, Any]) -> int:
    """How well a function tool fits the request (0: not at all).

    An intent counts when the request and the tool both use one of its words; a match in
    the tool's name weighs more than one in its description.
    """
    asked = {w.lower() for w in _words(user_text)}
    if not asked:
        return 0
    name = _name_words(str(tool.get("name", "")))
    described = {w.lower() for w in _words(str(tool.get("description") or ""))}
    score = 0
    for words in _INTENTS.values():
        if asked & words:
            if name & words:
                score += 3
            elif described & words:
                score += 1
    score += 2 * len((asked & name) - _GENERIC - _STOP)
    if score:
        reads, writes = bool(asked & _READS), bool(asked & _WRITES)
        if reads and not writes:  # a question: prefer a tool that looks things up
            score += 2 if name & _READ_VERBS else -3 if name & _WRITE_VERBS else 0
        elif writes and not reads:  # a request to act: prefer a tool that does it
            score += 2 if name & _WRITE_VERBS else -1 if name & _READ_VERBS else 0
    return max(score, 0)


#: Request words that ask to look something up, and ones that ask to change something.
_READS = _vocab(
    "what what's whats which when show list see check any upcoming agenda find look search "
    "view read get have do does is are"
)
_WRITES = _vocab(
    "create add make schedule book set send put arrange plan invite remind email e-mail "
    "write new cancel move delete update"
)
#: Tool-name words that read and ones that write.
_READ_VERBS = _vocab("list find get search lookup look read show fetch query browse")
_WRITE_VERBS = _vocab("create add schedule send set make new update delete post book put")


def _pick_tool(
    user_text: str, functions: Sequence[Mapping[str, Any]], tool_choice: Any
) -> Mapping[str, Any] | None:
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping):
        wanted = (tool_choice.get("function") or {}).get("name")
        for fn in functions:
            if fn.get("name") == wanted:
                return fn
    scored = [(tool_score(user_text, fn), -i, fn) for i, fn in enumerate(functions)]
    score, _, best = max(scored, key=lambda s: (s[0], s[1]))
    if score > 0 or tool_choice == "required":
        return best
    return None


# --- arguments from a JSON schema ------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ZONE = re.compile(r"\b(?:[A-Z][a-z]+(?:_[A-Z][a-z]+)*/[A-Z][A-Za-z_]+|UTC)\b")
#: What a request starts with before its subject, stripped in this order (see `_subject`).
_LEADS = tuple(
    re.compile(pattern, re.I)
    for pattern in (
        r"^(?:(?:please|hey|hi|ok|okay|livia)\b[,!\s]*)+",
        r"^(?:can|could|would|will) you\s+(?:please\s+)?",
        r"^(?:create|add|make|set up|set|schedule|book|send|write|draft|search for|search"
        r"|find|look up|look for|remind me|put)\b\s*",
        r"^(?:(?:a|an|the|me|my|our|some|new|quick)\b\s*)+",
        r"^(?:tasks?|reminders?|todos?|to-dos?|e-?mails?|mail|messages?|notes?|files?"
        r"|documents?|docs?|drive)\b[:\s]*",
        r"^(?:to|for|about|regarding|re|on|called|titled|named|saying)\b[:\s]*",
        r"^(?:(?:a|an|the|my|our)\b\s*)+",
    )
)
_TO_ADDRESS = re.compile(r"\b(?:to|with|for|cc)\s+[\w.+-]+@[\w-]+(?:\.[\w-]+)+\s*", re.I)


def arguments_for(schema: Mapping[str, Any], user_text: str) -> dict[str, Any]:
    """Arguments for a tool: every required property, filled from the user's text.

    Optional properties are left out except a recipient when the text names an email
    address and a timezone when it names one, which is what a model would pass too.
    """
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    args: dict[str, Any] = {}
    for name, prop in props.items():
        if not isinstance(prop, Mapping):
            continue
        wanted = (
            name in required
            or (_is_recipient(name) and _EMAIL.search(user_text) is not None)
            or ("zone" in name.lower() and _ZONE.search(user_text) is not None)
        )
        if wanted:
            args[name] = _value_for(name, prop, user_text)
    return args


def _is_recipient(name: str) -> bool:
    lowered = name.lower()
    return "email" in lowered or lowered in {"to", "recipient", "recipients"}


def _resolve(prop: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first non-null alternative of an anyOf/oneOf schema."""
    for key in ("anyOf", "oneOf"):
        for alt in prop.get(key) or ():
            if isinstance(alt, Mapping) and alt.get("type") != "null":
                return {**prop, **alt}
    return prop


def _value_for(name: str, prop: Mapping[str, Any], text: str) -> Any:
    prop = _resolve(prop)
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if prop.get("enum"):
        return prop.get("default", prop["enum"][0])
    if kind in ("integer", "number"):
        value = prop.get("default")
        if not isinstance(value, int | float):
            value = 30 if "minute" in name.lower() or "duration" in name.lower() else 1
        low, high = prop.get("minimum"), prop.get("maximum")
        value = max(value, low) if isinstance(low, int | float) else value
        value = min(value, high) if isinstance(high, int | float) else value
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return bool(prop.get("default", False))
    if kind == "array":
        items = prop.get("items") if isinstance(prop.get("items"), Mapping) else {}
        return [_value_for(name, items or {"type": "string"}, text)]
    if kind == "object":
        return arguments_for(prop, text)
    return _string_for(name, prop, text)


def _string_for(name: str, prop: Mapping[str, Any], text: str) -> str:
    lowered = name.lower()
    fmt = str(prop.get("format", ""))
    if _is_recipient(name) or lowered in {"cc", "bcc"} or fmt == "email":
        match = _EMAIL.search(text)
        return match.group(0) if match else "someone@example.com"
    if "zone" in lowered or lowered == "tz":
        zone = _ZONE.search(text)
        return zone.group(0) if zone else "UTC"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    if fmt == "date" or lowered in {"date", "due", "due_date", "day"}:
        return tomorrow.date().isoformat()
    if fmt == "date-time" or lowered in {"start", "start_time", "when", "datetime", "time"}:
        return tomorrow.isoformat(timespec="minutes")
    if lowered in {"title", "subject", "name", "summary", "topic", "headline"}:
        return _capitalize(_subject(text)) or "Untitled"
    if lowered in {"query", "q", "search", "keywords", "search_query", "term"}:
        return _subject(text) or _topic(text)
    return " ".join(text.split()) or "(no details given)"


def _subject(text: str) -> str:
    """What a request is about, shortened: "Please create a task to buy milk" -> "buy milk"."""
    core = _TO_ADDRESS.sub("", " ".join(text.split())).rstrip(" ?.!")
    for lead in _LEADS:
        core = lead.sub("", core, count=1)
    return _quote(core or text.strip(), 60)


def stream_pieces(text: str) -> list[str]:
    """Word-sized pieces of `text`, each with its leading space, the way tokens stream.

    Joined, they give `text` back exactly.
    """
    pieces: list[str] = re.findall(r"\s*\S+", text)
    rest = text[sum(len(p) for p in pieces) :]
    if rest or not pieces:
        pieces.append(rest)
    return pieces
