"""`livia stats`: a live terminal view of a running Livia's `/stats`, refreshed every second."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from livia.commands.address import add_url_option, resolve
from livia.monitoring.client import (
    ServerError,
    friendly_errors,
    open_client,
    raise_for_error,
)

#: Short names of the usual limits, for the table's narrow "windows" column.
LIMIT_LABELS = {
    "max_concurrent": "slots",
    "requests_per_minute": "rpm",
    "requests_per_hour": "rph",
    "tokens_per_minute": "tpm",
}
CIRCUIT_STYLES = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    add_url_option(parser)
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )


def fetch(client: Any, url: str) -> dict[str, Any]:
    """One `/stats` document."""
    with friendly_errors(url):
        response = client.get("/stats")
        raise_for_error(response)
        data = response.json()
    if not isinstance(data, dict):
        raise ServerError(f"{url}/stats did not answer with a JSON object; is this Livia?")
    return data


def _n(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _int(value: Any) -> str:
    return f"{_n(value):,.0f}"


def _seconds(value: Any) -> str:
    s = _n(value)
    if not s:
        return "–"
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.2f}s"


def _windows(limits: Any) -> Text:
    """`rpm 24/500 · rph 24/10000`, coloured by how full each window is."""
    out = Text()
    if not isinstance(limits, Mapping):
        return out
    for name, w in limits.items():
        if not isinstance(w, Mapping) or name == "max_concurrent":
            continue
        used, cap = _n(w.get("used")), _n(w.get("limit"))
        share = used / cap if cap else 0.0
        style = "red" if share >= 1 else "yellow" if share >= 0.8 else ""
        if out:
            out.append(" · ", style="dim")
        out.append(f"{LIMIT_LABELS.get(name, name)} {used:,.0f}/{cap:,.0f}", style=style)
    return out


#: The columns of the full table; a narrow terminal gets only the `COMPACT` ones.
COLUMNS = (
    "upstream",
    "in flight",
    "waiting",
    "calls",
    "ok",
    "failed",
    "success",
    "retries",
    "429s",
    "waited",
    "refused",
    "p50",
    "p95",
    "p99",
    "circuit",
    "windows",
)
COMPACT = ("upstream", "in flight", "waiting", "calls", "failed", "p95", "circuit", "windows")
#: Terminal width from which the full table fits.
FULL_WIDTH = 150


def _row(api: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """One upstream's cells, by column name."""
    circuit = str(s.get("circuit_state", "closed"))
    max_c = s.get("max_concurrent")
    waiting = _n(s.get("waiting"))
    failed = _n(s.get("failed_requests"))
    return {
        "upstream": Text(api, style="bold"),
        "in flight": _int(s.get("concurrent_requests")) + (f"/{_int(max_c)}" if max_c else ""),
        "waiting": Text(_int(waiting), style="yellow" if waiting else ""),
        "calls": _int(s.get("total_requests")),
        "ok": _int(s.get("successful_requests")),
        "failed": Text(_int(failed), style="red" if failed else ""),
        "success": f"{_n(s.get('success_rate', 1)) * 100:.0f}%",
        "retries": _int(s.get("retries")),
        "429s": _int(s.get("http_429")),
        "waited": _int(s.get("rate_limit_waits")),
        "refused": _int(s.get("capacity_exhausted")),
        "p50": _seconds(s.get("latency_p50")),
        "p95": _seconds(s.get("latency_p95")),
        "p99": _seconds(s.get("latency_p99")),
        "circuit": Text(circuit.replace("_", "-"), style=CIRCUIT_STYLES.get(circuit, "")),
        "windows": _windows(s.get("limits")),
    }


def render(stats: Mapping[str, Any], url: str, *, width: int = 200, note: str = "") -> Group:
    """The upstream table (all columns when `width` allows) and the conversation counters."""
    columns = COLUMNS if width >= FULL_WIDTH else COMPACT
    table = Table(
        title=Text(f"Livia at {url}" + ("  [demo mode]" if stats.get("demo") else "")),
        title_justify="left",
        header_style="bold",
    )
    for name in columns:
        left = name in ("upstream", "circuit", "windows")
        table.add_column(name, justify="left" if left else "right", no_wrap=name != "windows")
    upstreams = stats.get("upstreams")
    for api, s in (upstreams if isinstance(upstreams, Mapping) else {}).items():
        if isinstance(s, Mapping):
            cells = _row(str(api), s)
            table.add_row(*(cells[name] for name in columns))
    conv = stats.get("conversations")
    conv = conv if isinstance(conv, Mapping) else {}
    when = datetime.fromtimestamp(_n(stats.get("time")) or time.time()).strftime("%H:%M:%S")
    line = Text.assemble(
        ("conversations ", "bold"),
        f"{_int(conv.get('active'))} active · {_int(conv.get('queued'))} queued · "
        f"{_int(conv.get('answered'))} answered · {_int(conv.get('failed'))} failed",
        ("   updated " + when, "dim"),
    )
    parts: list[Any] = [table, line]
    if note:
        parts.append(Text(note, style="red"))
    return Group(*parts)


def run(args: argparse.Namespace) -> int:
    """Print one table (`--once`) or keep a live one up to date until Ctrl-C."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 180)  # a file or pipe: don't squeeze the table
    interval = max(0.2, float(args.interval))
    url, headers = resolve(args)
    try:
        with open_client(url, timeout=5.0) as client:
            client.headers.update(headers)
            stats = fetch(client, url)
            if args.once:
                console.print(render(stats, url, width=console.width))
                return 0
            _watch(console, client, url, stats, interval)
    except ServerError as exc:
        Console(stderr=True).print(f"livia stats: {exc}", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _watch(console: Console, client: Any, url: str, stats: dict[str, Any], interval: float) -> None:
    """Refresh the live view every `interval` s; a lost server is shown, then retried."""
    with Live(render(stats, url, width=console.width), console=console) as live:
        while True:
            time.sleep(interval)
            try:
                stats = fetch(client, url)
                note = ""
            except ServerError as exc:
                note = f"{exc} (retrying every {interval:g} s)"
            live.update(render(stats, url, width=console.width, note=note))
