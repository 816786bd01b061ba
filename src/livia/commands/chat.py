"""`livia chat`: talk to a running Livia from the terminal, the reply streamed as it comes."""

from __future__ import annotations

import argparse
import getpass
import uuid
from typing import Any

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


def _interactive(client: Any, console: Console, *, url: str, conversation: str, user: str) -> int:
    """The prompt loop: `/new` starts a new conversation, `/quit` (or Ctrl-D) leaves."""
    console.print(
        Text.assemble(
            ("Livia", "bold"), f" at {url} · conversation ", (conversation, "cyan"), f" as {user}"
        )
    )
    console.print("/new starts a new conversation, /quit (or Ctrl-D) leaves", style="dim")
    while True:
        try:
            text = console.input("[bold magenta]you ›[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.out("")
            return 0
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/new":
            conversation = _new_conversation()
            console.print(f"new conversation {conversation}", style="dim", markup=False)
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
