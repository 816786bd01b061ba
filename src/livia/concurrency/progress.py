"""Progress of a call that waits: who wants to hear about it, and how it is said.

A caller that shows progress (a turn streaming to a person) sets `progress_sink` for its
task; the manager then reports a call that waits for capacity (longer than
`WAIT_REPORT_AFTER`) or sleeps before a retry. Calls with no sink pay nothing.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a call waits for capacity before that is reported.
WAIT_REPORT_AFTER = 0.5

#: The current task's listener for progress reports, or None.
progress_sink: contextvars.ContextVar[Callable[[dict[str, Any]], None] | None] = (
    contextvars.ContextVar("livia_progress_sink", default=None)
)


def report(state: str, api: str, **info: Any) -> None:
    """Tell the current task's listener that a call to `api` is in `state` (never raises)."""
    sink = progress_sink.get()
    if sink is None:
        return
    try:
        sink({"state": state, "upstream": api, **info})
    except Exception:  # progress is advisory: a broken listener never breaks the call
        log.debug("progress listener failed", exc_info=True)
