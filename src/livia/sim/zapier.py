"""Zapier-like tools for the simulated MCP server: create a task, search files, schedule
an event, list the calendar's events, send an email.

Each tool is a plain function: its annotated signature is the tool's argument schema
(what an MCP client lists), its docstring the description, and it returns the result
text plus structured data, the way Zapier's actions report what they did. Ids and links
are derived from the arguments, so the same call gives the same answer. Invalid
arguments raise `ValueError` with a message a model can act on.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field

#: What a tool returns: the text a model reads and the same facts as data.
ToolOutput = tuple[str, dict[str, Any]]


def _number(*parts: object, digits: int = 10) -> int:
    """A stable pseudo id from the arguments."""
    seed = "|".join(str(p) for p in parts).encode("utf-8")
    return zlib.crc32(seed) % (10**digits)


def create_task(
    title: Annotated[
        str, Field(description="Title of the task, e.g. 'Call the dentist'.", min_length=1)
    ],
    notes: Annotated[str, Field(description="Details to add to the task.")] = "",
    due_date: Annotated[
        str | None, Field(description="Due date as YYYY-MM-DD; leave out for no due date.")
    ] = None,
    priority: Annotated[
        Literal["low", "normal", "high", "urgent"], Field(description="How urgent the task is.")
    ] = "normal",
    project: Annotated[str, Field(description="Todoist project to add the task to.")] = "Inbox",
) -> ToolOutput:
    """Create a task (to-do) in Todoist. Use it when the user asks to add a task, a to-do
    or a reminder."""
    title = title.strip()
    if not title:
        raise ValueError("title must not be empty: give the task a short title")
    due = None
    if due_date:
        try:
            due = datetime.strptime(due_date.strip()[:10], "%Y-%m-%d").date().isoformat()
        except ValueError:
            raise ValueError(
                f"due_date {due_date!r} is not a date: use YYYY-MM-DD, e.g. 2025-03-14"
            ) from None
    task_id = _number("task", title, project, due)
    url = f"https://app.todoist.com/app/task/{task_id}"
    when = f", due {due}" if due else ""
    text = (
        f'Task created in Todoist: "{title}" (id {task_id}) in project {project}{when}, '
        f"priority {priority}. Link: {url}"
    )
    data = {
        "id": str(task_id),
        "title": title,
        "project": project,
        "due_date": due,
        "priority": priority,
        "notes": notes,
        "url": url,
    }
    return text, data


_KINDS: dict[str, tuple[str, str, str]] = {
    # file_type: (extension, app, mime type)
    "document": ("docx", "Google Docs", "application/vnd.google-apps.document"),
    "spreadsheet": ("xlsx", "Google Sheets", "application/vnd.google-apps.spreadsheet"),
    "presentation": ("pptx", "Google Slides", "application/vnd.google-apps.presentation"),
    "pdf": ("pdf", "PDF", "application/pdf"),
    "image": ("png", "Image", "image/png"),
}
_VARIANTS = ("{q}", "{q} - draft", "Notes on {q}", "{q} (final)", "{q} - summary", "Old {q}")


def search_files(
    query: Annotated[
        str, Field(description="Words to look for in file names and contents.", min_length=1)
    ],
    max_results: Annotated[int, Field(description="Most files to return.", ge=1, le=25)] = 5,
    file_type: Annotated[
        Literal["any", "document", "spreadsheet", "presentation", "pdf", "image"],
        Field(description="Only return files of this kind."),
    ] = "any",
) -> ToolOutput:
    """Search files in Google Drive by name and content. Use it when the user asks to find
    or search a file or document."""
    query = " ".join(query.split())
    if not query:
        raise ValueError("query must not be empty: say what to search for")
    found = (_number("search", query, digits=6) % 4) + 1 if len(query) > 2 else 0
    kinds = list(_KINDS) if file_type == "any" else [file_type]
    today = datetime.now(UTC).date()
    files = []
    for i in range(min(found, max_results)):
        kind = kinds[(_number(query, i) % len(kinds))]
        ext, app, mime = _KINDS[kind]
        name = f"{_VARIANTS[i % len(_VARIANTS)].format(q=query)}.{ext}"
        file_id = f"1{_number('file', query, i, digits=9):09d}"
        modified = (today - timedelta(days=_number(query, i, digits=3) % 60)).isoformat()
        files.append(
            {
                "id": file_id,
                "name": name,
                "kind": app,
                "mime_type": mime,
                "modified": modified,
                "url": f"https://drive.google.com/file/d/{file_id}/view",
            }
        )
    if not files:
        return f'No files in Google Drive match "{query}".', {"query": query, "files": []}
    listing = "; ".join(
        f'{n}. "{f["name"]}" ({f["kind"]}, modified {f["modified"]}) {f["url"]}'
        for n, f in enumerate(files, 1)
    )
    count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
    return f'Found {count} in Google Drive matching "{query}": {listing}', {
        "query": query,
        "files": files,
    }


def schedule_event(
    title: Annotated[str, Field(description="Title of the event.", min_length=1)],
    start: Annotated[
        str,
        Field(
            description="Start date and time, ISO 8601 (e.g. 2025-03-14T15:00:00+01:00); "
            "UTC if no offset is given."
        ),
    ],
    duration_minutes: Annotated[
        int, Field(description="Length of the event in minutes.", ge=5, le=1440)
    ] = 30,
    attendees: Annotated[
        list[str] | None, Field(description="Email addresses of the people to invite.")
    ] = None,
    location: Annotated[str, Field(description="Where the event takes place.")] = "",
    description: Annotated[str, Field(description="Details for the invitation.")] = "",
) -> ToolOutput:
    """Schedule an event (meeting or appointment) in Google Calendar and invite attendees.
    Use it when the user asks to schedule, book or add something to the calendar."""
    title = title.strip()
    if not title:
        raise ValueError("title must not be empty: give the event a short title")
    try:
        begins = datetime.fromisoformat(start.strip())
    except ValueError:
        raise ValueError(
            f"start {start!r} is not a date and time: use ISO 8601, e.g. 2025-03-14T15:00:00Z"
        ) from None
    if begins.tzinfo is None:
        begins = begins.replace(tzinfo=UTC)
    attendees = attendees or []
    bad = [a for a in attendees if "@" not in a]
    if bad:
        raise ValueError(f"attendees must be email addresses; not one: {', '.join(bad)}")
    ends = begins + timedelta(minutes=duration_minutes)
    event_id = f"{_number('event', title, begins.isoformat(), digits=12):012d}"
    url = f"https://calendar.google.com/calendar/event?eid={event_id}"
    when = f"{begins:%a %d %b %Y, %H:%M}-{ends:%H:%M} {begins:%Z}".strip()
    who = f", with {', '.join(attendees)} (invitations sent)" if attendees else ""
    where = f" at {location}" if location else ""
    text = f'Event scheduled in Google Calendar: "{title}" on {when}{where}{who}. Link: {url}'
    return text, {
        "id": event_id,
        "title": title,
        "start": begins.isoformat(),
        "end": ends.isoformat(),
        "attendees": list(attendees),
        "location": location,
        "description": description,
        "url": url,
    }


#: The demo calendar's recurring events: (weekdays, hour, minute, minutes, title, where).
_ROUTINE: tuple[tuple[frozenset[int], int, int, int, str, str], ...] = (
    (frozenset({0, 1, 2, 3, 4}), 9, 30, 15, "Team stand-up", "Google Meet"),
    (frozenset({0}), 11, 0, 60, "Weekly planning", "Room Atlas"),
    (frozenset({1, 3}), 14, 0, 30, "1:1 with Anna", ""),
    (frozenset({2}), 16, 0, 45, "Product review", "Room Borealis"),
    (frozenset({4}), 12, 30, 60, "Team lunch", "Cafe Lumen"),
)


def list_events(
    start_date: Annotated[
        str | None,
        Field(description="First day to list, as YYYY-MM-DD; leave out for today (UTC)."),
    ] = None,
    days: Annotated[int, Field(description="How many days to list.", ge=1, le=31)] = 7,
    query: Annotated[str, Field(description="Only events whose title contains this.")] = "",
    *,
    _scheduled: Sequence[Mapping[str, Any]] = (),
) -> ToolOutput:
    """Find events in Google Calendar: what is on the calendar over the next days. Use it
    when the user asks what is on their calendar, their agenda or upcoming meetings."""
    if start_date:
        try:
            first = datetime.strptime(start_date.strip()[:10], "%Y-%m-%d").date()
        except ValueError:
            raise ValueError(
                f"start_date {start_date!r} is not a date: use YYYY-MM-DD, e.g. 2025-03-14"
            ) from None
    else:
        first = datetime.now(UTC).date()
    last = first + timedelta(days=days)
    events: list[dict[str, Any]] = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        for weekdays, hour, minute, minutes, title, where in _ROUTINE:
            if day.weekday() in weekdays:
                begins = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                events.append(
                    {
                        "id": f"{_number('routine', title, day.isoformat(), digits=12):012d}",
                        "title": title,
                        "start": begins.isoformat(),
                        "end": (begins + timedelta(minutes=minutes)).isoformat(),
                        "location": where,
                    }
                )
    for event in _scheduled:  # what schedule_event added on this server, in UTC
        with contextlib.suppress(KeyError, TypeError, ValueError):
            begins = datetime.fromisoformat(str(event["start"])).astimezone(UTC)
            ends = datetime.fromisoformat(str(event["end"])).astimezone(UTC)
            if first <= begins.date() < last:
                events.append(
                    {
                        "id": str(event["id"]),
                        "title": str(event["title"]),
                        "start": begins.isoformat(),
                        "end": ends.isoformat(),
                        "location": str(event.get("location") or ""),
                    }
                )
    wanted = query.strip().lower()
    events = sorted(
        (e for e in events if wanted in str(e["title"]).lower()), key=lambda e: str(e["start"])
    )
    span = f"{first:%a %d %b} to {last - timedelta(days=1):%a %d %b %Y}"
    if not events:
        what = f' matching "{query.strip()}"' if wanted else ""
        return f"No events{what} in Google Calendar from {span}.", {"events": []}
    lines = []
    for e in events:
        begins, ends = datetime.fromisoformat(e["start"]), datetime.fromisoformat(e["end"])
        where = f" ({e['location']})" if e["location"] else ""
        lines.append(f"{begins:%a %d %b %H:%M}-{ends:%H:%M} {begins:%Z}: {e['title']}{where}")
    count = f"{len(events)} event{'s' if len(events) != 1 else ''}"
    return f"{count} in Google Calendar from {span}: " + "; ".join(lines) + ".", {"events": events}


def send_email(
    to: Annotated[str, Field(description="Recipient email address(es), comma-separated.")],
    subject: Annotated[str, Field(description="Subject line.", min_length=1)],
    body: Annotated[str, Field(description="The message, as plain text.")],
    cc: Annotated[list[str] | None, Field(description="Email addresses to copy.")] = None,
) -> ToolOutput:
    """Send an email from the user's Gmail account. Use it when the user asks to send,
    write or mail a message to someone."""
    recipients = [r.strip() for r in to.split(",") if r.strip()]
    cc = cc or []
    bad = [r for r in [*recipients, *cc] if "@" not in r]
    if not recipients or bad:
        raise ValueError(
            "to must be one or more email addresses"
            + (f"; not one: {', '.join(bad)}" if bad else "")
        )
    message_id = f"{_number('mail', to, subject, body, digits=12):012x}"
    copy = f", cc {', '.join(cc)}" if cc else ""
    text = (
        f'Email sent with Gmail to {", ".join(recipients)}{copy}: subject "{subject}" '
        f"({len(body)} characters, message id {message_id})."
    )
    return text, {
        "id": message_id,
        "to": recipients,
        "cc": list(cc),
        "subject": subject,
        "thread_id": message_id,
        "label_ids": ["SENT"],
    }


#: The tools the simulated Zapier server offers, by name.
TOOLS: dict[str, Callable[..., ToolOutput]] = {
    fn.__name__: fn for fn in (create_task, search_files, schedule_event, list_events, send_email)
}
