"""`livia db`: the store's schema version, and upgrading it (also done at start-up)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from livia.config import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "action",
        choices=("upgrade", "current"),
        help="upgrade: migrate [store] url to the newest schema; current: show its version",
    )


def run(args: argparse.Namespace) -> int:
    """Show or upgrade the schema of the configured store."""
    from livia.store import Store, StoreError

    settings = load_settings(args.config)
    url = settings.store.url
    try:
        if args.action == "upgrade":
            before, after = asyncio.run(Store.upgrade(url))
            info = asyncio.run(Store.inspect(url))
            if before == after:
                print(f"{info.display}: schema {after} is current; nothing to do")
            else:
                print(f"{info.display}: schema upgraded from {before or 'empty'} to {after}")
            return 0
        info = asyncio.run(Store.inspect(url))
    except StoreError as exc:
        print(f"livia db: {exc}", file=sys.stderr)
        return 1
    state = "current" if info.up_to_date else f"this Livia needs {info.head}: run livia db upgrade"
    print(
        f"{info.display}: schema {info.current or 'none (empty)'} ({state}); "
        f"{info.live_processes} live process(es)"
    )
    return 0
