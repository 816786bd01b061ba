"""Logging set-up: one line per event, `key=value` context, secrets redacted.

`redact` is the one place that knows what a secret looks like; it serves the log lines
(`RedactingFormatter`) and every other output surface (`/stats`, the dashboard, error
messages: `scrub`, `describe_error`). `escape_controls` keeps a log record on one line,
so a value sent by a client (an id with CR/LF in it) cannot forge a line of its own.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from urllib.parse import urlsplit, urlunsplit

#: Patterns of secrets that must never reach a log line.
_SECRET = re.compile(
    r"(sk-[A-Za-z0-9_-]{8,}|xox[abposre]-[A-Za-z0-9-]{8,}|xapp-[A-Za-z0-9-]{8,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/-]{8,}=*)"
)
#: A URL in free text (up to whitespace, quotes or brackets).
_URL = re.compile(r"""\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>()\[\]{}]+""")
#: Query parameters whose values are credentials.
_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:[a-z_]*(?:key|token|secret|signature|sig|password|auth)[a-z_]*)=)[^&#\s]+"
)
#: A path segment that looks like a key: long, and mixing letters with digits (Zapier
#: MCP URLs carry the key in the path).
_OPAQUE_SEGMENT = re.compile(
    r"(?<=/)(?=[A-Za-z0-9_=-]*[0-9])(?=[A-Za-z0-9_=-]*[A-Za-z])[A-Za-z0-9_=-]{20,}"
)
_MASK = "…[redacted]"


def redact(text: str) -> str:
    """Replace anything that looks like an API key or token with a mask: provider keys,
    bearer credentials, URL passwords, credential query parameters and key-like URL path
    segments."""
    text = _SECRET.sub(lambda m: m.group(0)[:4] + _MASK, text)
    return _URL.sub(lambda m: _redact_url(m.group(0)), text)


def _redact_url(url: str) -> str:
    url = safe_url(url)
    url = _SECRET_PARAM.sub(lambda m: m.group(1) + "***", url)
    return _OPAQUE_SEGMENT.sub("***", url)


def url_origin(url: str) -> str:
    """Only the scheme and host (and port) of `url`: what may be shown of an MCP URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "[url]"
    if not parts.scheme or not host:
        return "[url]"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def scrub(text: str) -> str:
    """`text` fit for a surface anyone with the API token sees (`/stats`, the dashboard):
    secrets masked and every URL cut to its scheme and host."""
    return _URL.sub(lambda m: url_origin(m.group(0)), redact(text))


def describe_error(exc: BaseException, *, status: int | None = None, limit: int = 300) -> str:
    """A failure for people and monitoring: its class, its HTTP status when it has one,
    and its message scrubbed of secrets and URLs, on one line."""
    if status is None:
        code = getattr(exc, "status_code", None) or getattr(exc, "status", None)
        if code is None:
            code = getattr(getattr(exc, "response", None), "status_code", None)
        status = code if isinstance(code, int) else None
    head = type(exc).__name__ + (f" (HTTP {status})" if status else "")
    detail = escape_controls(scrub(str(exc))).strip()
    text = f"{head}: {detail}" if detail else head
    return text[:limit] + ("…" if len(text) > limit else "")


#: C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with control characters written as escapes (``\\n``, ``\\x00``…): one line."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: What is being worked on (`conversation_id`, `message_id`), for every log line written
#: meanwhile, in this task and the tasks it starts (`LogContextFilter` adds it to records).
log_context: ContextVar[Mapping[str, str] | None] = ContextVar("livia_log_context", default=None)


@contextlib.contextmanager
def logging_context(**fields: str) -> Iterator[None]:
    """Within the block, log records carry `fields` (``key=value`` at the end of the line),
    so everything done for one message can be followed through the logs."""
    token = log_context.set({**(log_context.get() or {}), **fields})
    try:
        yield
    finally:
        log_context.reset(token)


class LogContextFilter(logging.Filter):
    """Puts the `log_context` in force when a record is made on the record (``context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = log_context.get()
        if fields and not hasattr(record, "context"):
            record.context = dict(fields)
        return True


def _with_context(line: str, record: logging.LogRecord) -> str:
    """`line` plus ``key=value`` for each context field the message does not name yet."""
    fields = getattr(record, "context", None)
    if not isinstance(fields, Mapping):
        return line
    extra = [f"{k}={v}" for k, v in fields.items() if f"{k}=" not in line]
    return " ".join([line, *extra]) if extra else line


class RedactingFormatter(logging.Formatter):
    """A formatter that masks tokens in the final line, whatever put them there, and keeps
    each record's message on one line (control characters escaped). A traceback keeps its
    lines, each indented, so none of them can pass for a record of its own. The record's
    context (`logging_context`) ends the line as ``key=value`` pairs."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(_with_context(super().formatMessage(record), record))

    def formatException(self, ei: object) -> str:
        return _indented(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_controls(line) for line in text.splitlines())


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger for the CLI (library code only ever gets loggers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(LogContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "uvicorn.access", "mcp", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def safe_url(url: str) -> str:
    """`url` with any password replaced, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username or ''}:***@"
    return urlunsplit(parts._replace(netloc=user + host))
