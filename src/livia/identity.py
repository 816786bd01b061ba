"""Who is calling: the operator, a user with an API key, or (nothing configured) this machine.

Three kinds of caller (`Principal`):

- **operator** — presents `[server] api_token`; may act for any user (a bridge, an admin).
- **user** — presents a key made by ``livia keys create USER``; acts as that user only.
- **local** — neither a token nor any key is configured: the server answers requests from
  this machine only (loopback peers, and the Host/Origin guard) and trusts their user ids.

Keys look like ``livia_<key_id>_<secret>``: `key_id` (12 hex digits) is public and names
the key in ``livia keys list``; the secret holds 256 random bits. The store keeps only the
SHA-256 of the whole key, so a copy of the database gives no usable key; comparing hashes
takes constant time. Once any key has been created (even if revoked since), a request
without a credential is refused: revoking every key does not re-open the server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from livia.store import Store

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "Identity",
    "Principal",
    "Unauthenticated",
    "hash_key",
    "iso_time",
    "new_key",
]

KEY_PREFIX = "livia_"
#: Seconds between two writes of one key's `last_used_at` (a write per request would
#: serialise every request on SQLite's single writer).
TOUCH_EVERY = 60.0
#: Seconds "no key exists yet" is trusted before the store is asked again (keys made by
#: ``livia keys create`` in another process close an open server within this time).
NO_KEYS_RECHECK = 1.0


def iso_time(epoch: float | None) -> str | None:
    """`epoch` as ISO 8601 in UTC with milliseconds (``2026-11-25T14:03:07.120Z``)."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (key_id, key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The public id inside a key, or None when `key` is not shaped like one."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not secret or len(key_id) != 12:
        return None
    return key_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A user's API key as listed (never the key itself)."""

    key_id: str
    user_id: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def of(cls, row: dict[str, Any]) -> ApiKey:
        """From a `Store.api_key` row."""
        return cls(
            key_id=str(row["key_id"]),
            user_id=str(row["user_id"]),
            created_at=float(row["created_at"]),
            last_used_at=_float(row.get("last_used_at")),
            revoked_at=_float(row.get("revoked_at")),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "user_id": self.user_id,
            "created_at": iso_time(self.created_at),
            "last_used_at": iso_time(self.last_used_at),
            "revoked_at": iso_time(self.revoked_at),
        }


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    kind: Literal["operator", "user", "local"]
    #: The user a key belongs to (None for the operator and local callers).
    user_id: str | None = None
    key_id: str | None = None

    @property
    def any_user(self) -> bool:
        """True when the caller may act for any user and read any conversation."""
        return self.kind != "user"

    def may_use(self, owner: str) -> bool:
        """True when the caller may read and write a conversation started by `owner`."""
        return self.any_user or owner == self.user_id


class Unauthenticated(Exception):
    """No acceptable credential; `status` is 401 (give one) or 403 (local only)."""

    def __init__(self, message: str, *, status: int = 401, type_: str = "unauthorized") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type_


class Identity:
    """Decides who a request comes from, and manages users' keys in the store."""

    def __init__(self, store: Store, operator_token: str = "") -> None:
        self._store = store
        self._token = operator_token
        self._keys_exist = False
        self._checked_at = -NO_KEYS_RECHECK

    @property
    def has_operator_token(self) -> bool:
        return bool(self._token)

    # -- keys ---------------------------------------------------------------------------

    async def create_key(self, user_id: str) -> tuple[ApiKey, str]:
        """A new key for `user_id`: (what is stored about it, the key — shown only now)."""
        key_id, key = new_key()
        row = await self._store.add_api_key(key_id, user_id, hash_key(key))
        self._keys_exist = True
        return ApiKey.of(row), key

    async def keys(self, *, user_id: str | None = None) -> list[ApiKey]:
        return [ApiKey.of(row) for row in await self._store.api_keys(user_id=user_id)]

    async def revoke(self, key_id: str) -> ApiKey | None:
        row = await self._store.revoke_api_key(key_id)
        return ApiKey.of(row) if row is not None else None

    async def verify(self, key: str) -> ApiKey | None:
        """The live key `key` is, or None (unknown, malformed, or revoked)."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        row = await self._store.api_key(key_id)
        if row is None or not hmac.compare_digest(str(row["key_hash"]), hash_key(key)):
            return None
        found = ApiKey.of(row)
        if found.revoked:
            return None
        if found.last_used_at is None or time.time() - found.last_used_at > TOUCH_EVERY:
            await self._store.touch_api_key(key_id)
        return found

    async def keys_exist(self) -> bool:
        """True once any key was created (cached: it never becomes false again)."""
        if self._keys_exist:
            return True
        now = time.monotonic()
        if now - self._checked_at >= NO_KEYS_RECHECK:
            self._checked_at = now
            self._keys_exist = await self._store.any_api_keys()
        return self._keys_exist

    # -- requests -----------------------------------------------------------------------

    def is_operator(self, presented: str) -> bool:
        """True when `presented` is the operator's token."""
        return bool(self._token) and hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"), self._token.encode()
        )

    async def principal(self, authorization: str | None, peer: str | None) -> Principal:
        """Who sent a request with this ``Authorization`` header from this peer address.

        Raises `Unauthenticated` when a credential is needed and missing or wrong, or when
        nothing is configured and the peer is not this machine.
        """
        scheme, _, given = (authorization or "").partition(" ")
        presented = given.strip() if scheme.lower() == "bearer" else ""
        keys = await self.keys_exist()
        if presented:
            if self.is_operator(presented):
                return Principal("operator")
            if keys and (found := await self.verify(presented)) is not None:
                return Principal("user", user_id=found.user_id, key_id=found.key_id)
        if self._token or keys:
            what = "a user key (livia keys create USER)"
            if self._token:
                what += " or the server's api_token (LIVIA_SERVER__API_TOKEN)"
            said = "is wrong or revoked" if presented else "is missing"
            raise Unauthenticated(
                f"this endpoint needs `Authorization: Bearer <key>` with {what}; the key {said}"
            )
        if peer is not None and not _local(peer):
            raise Unauthenticated(
                "this Livia has no api_token and no user keys, so it answers only requests "
                "from its own machine; create a key with `livia keys create USER` or set "
                "LIVIA_SERVER__API_TOKEN",
                status=403,
                type_="local_only",
            )
        return Principal("local")


def _local(peer: str) -> bool:
    """True for loopback addresses and for peers that are no IP address (in-process tests,
    Unix sockets)."""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return True
