"""`livia keys create USER | list | revoke KEY_ID`: users' API keys, in the configured store.

A request with a user's key acts as that user (`livia.identity`). The key is printed
once, alone on the last line of `create` (so ``livia keys create ann | tail -n1`` is the
key); the store keeps only its hash. `list` never shows a key, only its public id.
Works on the `[store] url` of the configuration (SQLite or PostgreSQL), with or without a
running server: a revoked key is refused by every replica at its next request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from livia.config import load_settings
from livia.identity import ApiKey, Identity, iso_time
from livia.store import Store, StoreError

_MAX_USER = 256


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's actions."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key for a user; prints it once")
    create.add_argument("user", metavar="USER", help="the user the key acts as")
    listing = actions.add_parser("list", help="every key: id, user, created, last used, revoked")
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    revoke = actions.add_parser("revoke", help="revoke a key at once (on every replica)")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, from `livia keys list`")


def run(args: argparse.Namespace) -> int:
    """Run the action on the configured store; 1 (with a message) when it cannot be done."""
    settings = load_settings(args.config)
    store_log = logging.getLogger("livia.store")
    store_log.setLevel(max(store_log.getEffectiveLevel(), logging.WARNING))
    try:
        return asyncio.run(_run(args, settings.store.url, settings.store.lease))
    except StoreError as exc:
        print(f"livia keys: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, url: str, lease: float) -> int:
    async with Store(url, lease=lease, instance_id="livia-keys") as store:
        identity = Identity(store)
        if args.action == "create":
            return await _create(identity, args.user, store.display)
        if args.action == "list":
            return await _list(identity, args.user, as_json=args.json)
        return await _revoke(identity, args.key_id)


async def _create(identity: Identity, user: str, where: str) -> int:
    user = user.strip()
    if not user or len(user) > _MAX_USER or not user.isprintable():
        print(
            f"livia keys: the user must be 1 to {_MAX_USER} printable characters",
            file=sys.stderr,
        )
        return 2
    if user.lower().startswith("slack:"):
        print("livia keys: user ids starting with 'slack:' belong to Slack", file=sys.stderr)
        return 2
    key, secret = await identity.create_key(user)
    print(f"Created key {key.key_id} for user {user!r} in {where}.")
    print("It acts as that user: send it as `Authorization: Bearer <key>`.")
    print("This is the only time it is shown; only its hash is stored:")
    print(secret)
    return 0


async def _list(identity: Identity, user: str | None, *, as_json: bool) -> int:
    keys = await identity.keys(user_id=user)
    if as_json:
        print(json.dumps([key.as_json() for key in keys], indent=2))
        return 0
    if not keys:
        print("No keys yet: `livia keys create USER` makes one.")
        return 0
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    table = Table("key id", "user", "created", "last used", "revoked", box=None)
    for key in keys:
        table.add_row(*_row(key))
    console.print(table)
    return 0


def _row(key: ApiKey) -> list[str]:
    def when(epoch: float | None) -> str:
        text = iso_time(epoch)
        return text[:19].replace("T", " ") + " UTC" if text else "–"

    return [key.key_id, key.user_id, when(key.created_at), when(key.last_used_at), _revoked(key)]


def _revoked(key: ApiKey) -> str:
    if key.revoked_at is None:
        return "no"
    text = iso_time(key.revoked_at) or ""
    return "yes, " + text[:19].replace("T", " ") + " UTC"


async def _revoke(identity: Identity, key_id: str) -> int:
    before: dict[str, Any] = {k.key_id: k for k in await identity.keys()}
    if key_id not in before:
        print(f"livia keys: no key {key_id!r} (see `livia keys list`)", file=sys.stderr)
        return 1
    if before[key_id].revoked:
        print(f"Key {key_id} (user {before[key_id].user_id!r}) was already revoked.")
        return 0
    key = await identity.revoke(key_id)
    assert key is not None
    print(f"Revoked key {key.key_id} of user {key.user_id!r}: it is refused from now on.")
    return 0
