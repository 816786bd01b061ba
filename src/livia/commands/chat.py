"""`livia chat`."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""


def run(args: argparse.Namespace) -> int:
    """Not built yet."""
    raise SystemExit("livia chat: not available yet")
