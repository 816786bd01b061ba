"""Logging set-up: one line per event, `key=value` context, secrets redacted."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

#: Patterns of secrets that must never reach a log line.
_SECRET = re.compile(
    r"(sk-[A-Za-z0-9_-]{8,}|xox[abposr]-[A-Za-z0-9-]{8,}|xapp-[A-Za-z0-9-]{8,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/-]{8,}=*)"
)


def redact(text: str) -> str:
    """Replace anything that looks like an API key or token with a mask."""
    return _SECRET.sub(lambda m: m.group(0)[:4] + "…[redacted]", text)


class RedactingFormatter(logging.Formatter):
    """A formatter that masks tokens in the final line, whatever put them there."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger for the CLI (library code only ever gets loggers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "uvicorn.access", "mcp"):
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
