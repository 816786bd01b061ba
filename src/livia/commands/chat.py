"""`livia chat`: talk to a running Livia from the terminal, the reply streamed as it comes."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
from rich.console import Console
from rich.text import Text

from livia.commands.address import add_url_option, resolve
from livia.monitoring.client import (
    ServerError,
    friendly_errors,
    iter_sse,
    open_client,
    raise_for_error,
)

#: Most seconds to wait for the next piece of a reply (the server pings every 15 s).
READ_TIMEOUT = 300.0


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    add_url_option(parser)
    parser.add_argument("--conversation", help="conversation id to continue (default: a new one)")
    parser.add_argument("--user", help="your user id (default: cli-$USER)")
    parser.add_argument("--once", metavar="TEXT", help="send one message, print the reply, exit")
    parser.add_argument(
        "--timeout",
        type=float,
        default=READ_TIMEOUT,
        help=f"seconds to wait for the next piece of a reply (default {READ_TIMEOUT:.0f})",
    )


def _default_user() -> str:
    try:
        return f"cli-{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _new_conversation() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


class ReplyPrinter:
    """Renders one reply's events: text inline as it streams, tools on their own lines."""

    def __init__(self, console: Console, prompt: str = "") -> None:
        self.console = console
        self.prompt = prompt  # printed before the first piece of text
        self.text = ""
        self.mid_line = False
        self.error: str | None = None

    def start_text(self) -> None:
        """Print the prompt once, before the reply's first text."""
        if self.prompt:
            self.console.print(self.prompt, style="bold cyan", end="", markup=False)
            self.prompt = ""
            self.mid_line = True

    def end_line(self) -> None:
        """Finish a line of streamed text, if one is open."""
        if self.mid_line:
            self.console.out("")
            self.mid_line = False

    def event(self, name: str, data: Any) -> bool:
        """Show one event; True when the reply is complete."""
        data = data if isinstance(data, dict) else {"text": str(data)}
        if name in ("delta", "message"):
            piece = str(data.get("text", ""))
            self.start_text()
            self.text += piece
            self.console.out(piece, end="", highlight=False)
            self.mid_line = not piece.endswith("\n")
        elif name == "tool_started":
            self.end_line()
            self.console.print(Text.assemble("  ", (f"⚙ {data.get('tool', 'tool')}", "cyan"), " …"))
        elif name == "tool_finished":
            self.end_line()
            ok = data.get("ok", True)
            mark = ("✓", "green") if ok else ("✗", "red")
            summary = str(data.get("summary") or ("done" if ok else "failed"))
            self.console.print(Text.assemble("  ", mark, f" {data.get('tool', 'tool')}: {summary}"))
        elif name == "done":
            reply = data.get("reply")
            if not self.text and isinstance(reply, str):  # nothing streamed (a repeat)
                self.start_text()
                self.console.out(reply, end="", highlight=False)
                self.mid_line = True
            self.end_line()
            if data.get("error"):
                self.error = str(data["error"])
            return True
        elif name == "error":
            self.end_line()
            err = data.get("error", data)
            self.error = str(err.get("message") or err) if isinstance(err, dict) else str(err)
            return True
        return False


def send(
    client: Any,
    console: Console,
    *,
    url: str,
    conversation: str,
    user: str,
    text: str,
    prompt: str = "",
) -> bool:
    """Send one message and stream its reply to `console`; False when it failed."""
    body = {
        "conversation_id": conversation,
        "user_id": user,
        "text": text,
        "message_id": uuid.uuid4().hex,
    }
    printer = ReplyPrinter(console, prompt)
    finished = False
    with (
        friendly_errors(url),
        client.stream(
            "POST", "/v1/chat", json=body, headers={"Accept": "text/event-stream"}
        ) as response,
    ):
        raise_for_error(response)
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.read()
            finished = printer.event("done", response.json())
        else:
            for name, data in iter_sse(response.iter_lines()):
                if printer.event(name, data):
                    finished = True
                    break
    if not finished:
        printer.end_line()
        printer.error = "the connection closed before the reply finished"
    if printer.error:
        console.print(Text(f"✗ {printer.error}", style="red"))
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Send `--once TEXT`, or read messages from the prompt until end of input."""
    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)
    conversation = args.conversation or _new_conversation()
    user = args.user or _default_user()
    url, headers = resolve(args)
    try:
        with open_client(url, read_timeout=args.timeout) as client:
            client.headers.update(headers)
            if args.once is not None:
                ok = send(
                    client,
                    console,
                    url=url,
                    conversation=conversation,
                    user=user,
                    text=args.once,
                )
                return 0 if ok else 1
            return _interactive(client, console, url=url, conversation=conversation, user=user)
    except ServerError as exc:
        errors.print(f"livia chat: {exc}", markup=False, soft_wrap=True)
        return 1


#: The commands the prompt handles itself; nothing starting with "/" reaches the model
#: (type `//text` to send "/text").
HELP = (
    ("/help", "show this list"),
    ("/new", "start a new conversation"),
    ("/history", "show this conversation's earlier messages"),
    ("/quit", "leave (also /exit, Ctrl-D)"),
)


def _interactive(client: Any, console: Console, *, url: str, conversation: str, user: str) -> int:
    """The prompt loop: `/help` lists the commands, `/quit` (or Ctrl-D) leaves."""
    demo = bool(server_info(client).get("demo"))
    header = Text.assemble(("Livia", "bold"), f" at {url}")
    if demo:
        header.append(" · demo mode (a simulated model; no OPENAI_API_KEY)", style="yellow")
    header.append_text(Text.assemble(" · conversation ", (conversation, "cyan"), f" as {user}"))
    console.print(header)
    console.print("/help lists the commands, /quit (or Ctrl-D) leaves", style="dim")
    show_history(client, console, url=url, conversation=conversation, user=user)
    reader = LineReader(console)
    try:
        while True:
            try:
                text = reader.read().strip()
            except (EOFError, KeyboardInterrupt):
                console.out("")
                return 0
            if not text:
                continue
            if text.startswith("//"):
                text = text[1:]
            elif text.startswith("/"):
                command = text.split()[0].lower()
                if command in ("/quit", "/exit"):
                    return 0
                if command == "/new":
                    conversation = _new_conversation()
                    console.print(f"new conversation {conversation}", style="dim", markup=False)
                elif command == "/history":
                    show_history(client, console, url=url, conversation=conversation, user=user)
                elif command in ("/help", "/?"):
                    for name, what in HELP:
                        console.print(Text.assemble(("  " + name.ljust(10), "bold"), what))
                    console.print("  //text sends a message that starts with /", style="dim")
                else:
                    console.print(
                        f"unknown command {command}; /help lists them (//text sends /text)",
                        style="yellow",
                        markup=False,
                    )
                continue
            try:
                send(
                    client,
                    console,
                    url=url,
                    conversation=conversation,
                    user=user,
                    text=text,
                    prompt="livia › ",
                )
            except KeyboardInterrupt:
                console.print("\n[dim](stopped waiting; the reply will be in the conversation)[/]")
            except ServerError as exc:
                if "no Livia at" in str(exc):
                    raise
                console.print(Text(f"✗ {exc}", style="red"))
    finally:
        reader.close()


def server_info(client: Any) -> dict[str, Any]:
    """`GET /healthz` (whether the server runs in demo mode); {} when it does not say."""
    try:
        response = client.get("/healthz")
        data = response.json() if response.status_code == 200 else {}
    except (httpx2.HTTPError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def show_history(
    client: Any, console: Console, *, url: str, conversation: str, user: str = ""
) -> int:
    """Print the conversation's earlier messages; how many there were (404: a new one)."""
    with friendly_errors(url):
        response = client.get(f"/v1/conversations/{quote(conversation)}")
    if response.status_code == 404:
        console.print(f"new conversation {conversation}", style="dim", markup=False)
        return 0
    raise_for_error(response)
    try:
        data = response.json()
    except ValueError:
        return 0
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not messages:
        console.print(f"conversation {conversation}: no messages yet", style="dim", markup=False)
        return 0
    console.print(f"earlier in {conversation}:", style="dim", markup=False)
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = str(message.get("content") or "")
        if message.get("role") == "user":
            who = message.get("user_id")
            label = "you › " if who in (None, "", user) else f"{who} › "
            console.print(Text.assemble((label, "bold magenta"), content))
        else:
            console.print(Text.assemble(("livia › ", "bold cyan"), content))
            if message.get("error"):
                console.print(Text(f"✗ {message['error']}", style="red"))
    pending = data.get("pending") if isinstance(data, dict) else 0
    if isinstance(pending, int) and pending:
        console.print(f"({pending} still being answered)", style="dim", markup=False)
    console.rule(style="dim")
    return len(messages)


def history_file() -> Path:
    """Where the prompt's history is kept between sessions."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "livia" / "chat_history"


class LineReader:
    """The prompt: line editing and history through `readline` on a terminal.

    Without a terminal (a pipe, a file) or without `readline` (Windows), lines are read
    plainly.
    """

    PROMPT = "you › "

    def __init__(self, console: Console) -> None:
        self.console = console
        self.readline: Any = None
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            return
        try:
            import readline
        except ImportError:  # pragma: no cover - no readline on this platform
            return
        self.readline = readline
        readline.set_history_length(1000)
        with contextlib.suppress(OSError):
            readline.read_history_file(history_file())

    def read(self) -> str:
        """One line (EOFError at end of input)."""
        if self.readline is None:
            return self.console.input(f"[bold magenta]{self.PROMPT.strip()}[/] ")
        # \001 and \002 tell readline the colour codes take no room on the line.
        return input(f"\001\033[1;35m\002{self.PROMPT.strip()}\001\033[0m\002 ")

    def close(self) -> None:
        """Keep the history for the next session."""
        if self.readline is None:
            return
        path = history_file()
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(path)
