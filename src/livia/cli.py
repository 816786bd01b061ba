"""The `livia` command: one subcommand per module in `livia.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from livia import __version__
from livia.config import ConfigError
from livia.logs import configure_logging

#: Subcommand name -> (module in livia.commands, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run Livia: HTTP API, web chat, dashboard and Slack"),
    "bench": ("bench", "measure the concurrency manager against baselines"),
    "sim": ("sim", "run a simulated upstream (OpenAI-compatible model or MCP tools)"),
    "chat": ("chat", "talk to a running Livia from the terminal"),
    "stats": ("stats", "watch a running Livia's upstream statistics"),
    "check": ("check", "validate the configuration and reach every upstream"),
    "keys": ("keys", "create, list and revoke users' API keys"),
    "db": ("db", "show or upgrade the store's schema version"),
}


#: Used when `--log-level` is given neither before nor after the subcommand.
DEFAULT_LOG_LEVEL = "INFO"


def _global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    """`--config` and `--log-level`, accepted before and after the subcommand.

    The subcommands declare them with `argparse.SUPPRESS` as the default, so a value
    given before the subcommand is not overwritten by a default after it.
    """
    parser.add_argument(
        "--config", default=default, help="TOML config file (default: $LIVIA_CONFIG)"
    )
    parser.add_argument(
        "--log-level",
        default=default if default is argparse.SUPPRESS else DEFAULT_LOG_LEVEL,
        help="DEBUG, INFO, WARNING or ERROR (default INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livia", description="Livia, a multi-user AI chatbot.")
    parser.add_argument("--version", action="version", version=f"livia {__version__}")
    _global_options(parser, default=None)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text, parents=[common])
        mod = importlib.import_module(f"livia.commands.{module}")
        mod.configure(sub)
        sub.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (errors are a message, never a trace)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"livia: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: a message, not a stack trace
        logging.getLogger("livia").debug("command failed", exc_info=True)
        print(f"livia {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
