"""The SQLite store: inbox, history, idempotency marks, durability settings."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from livia.conversations.types import IncomingMessage, Reply
from livia.store import Store, StoreError, sqlite_path


def _msg(mid: str, cid: str = "c1", text: str = "hi") -> IncomingMessage:
    return IncomingMessage(cid, "u1", text, mid, channel="slack", meta={"ts": "1.2"})


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path}/sub/dir/livia.db")
    await s.open()
    yield s
    await s.close()


def test_url_forms() -> None:
    assert sqlite_path("sqlite:///var/livia.db") == "var/livia.db"
    assert sqlite_path("sqlite:////tmp/x.db") == "/tmp/x.db"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    with pytest.raises(StoreError, match="unsupported"):
        sqlite_path("postgres://x/y")


async def test_open_creates_parent_dir_and_uses_wal(store: Store, tmp_path: Path) -> None:
    db_file = tmp_path / "sub" / "dir" / "livia.db"
    assert db_file.exists()
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_accept_is_idempotent_and_keeps_meta(store: Store) -> None:
    turn, created, first = await store.accept(_msg("m1"))
    assert created and first and turn.status == "pending" and turn.meta == {"ts": "1.2"}
    again, created, first = await store.accept(_msg("m1"))
    assert not created and not first and again == turn
    assert (await store.accept(_msg("m2"))).first is False
    # the same message_id in another conversation is another message
    other = await store.accept(_msg("m1", cid="c2"))
    assert other.created and other.first


async def test_pending_complete_and_turns(store: Store) -> None:
    for i in range(3):
        await store.accept(_msg(f"m{i}", text=f"t{i}"))
    await store.complete(Reply("c1", "m0", "r0"))
    await store.complete(Reply("c1", "m1", "sorry", error="timeout"))
    assert [t.message_id for t in await store.pending()] == ["m2"]
    turns = await store.turns("c1")
    assert [(t.text, t.status, t.reply) for t in turns] == [
        ("t0", "answered", "r0"),
        ("t1", "failed", "sorry"),
        ("t2", "pending", None),
    ]
    before = await store.turns("c1", before_seq=turns[2].seq, limit=1)
    assert [t.message_id for t in before] == ["m1"]
    assert turns[0].to_reply() == Reply("c1", "m0", "r0")
    assert turns[2].message() == _msg("m2", text="t2")
    assert await store.count_conversations() == 1


async def test_state_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/livia.db"
    async with Store(url) as s:
        await s.accept(_msg("m1"))
    async with Store(url) as s:
        assert [t.message_id for t in await s.pending()] == ["m1"]


async def test_seen_marks_once_even_under_a_burst(store: Store) -> None:
    results = await asyncio.gather(*(store.seen("slack:Ev1") for _ in range(20)))
    assert results.count(False) == 1
    assert await store.seen("slack:Ev2", ttl=0.0) is False
    await asyncio.sleep(0.01)
    assert await store.seen("slack:Ev2") is False  # the first mark had expired


async def test_closed_store_says_so(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(StoreError, match="closed"):
        await s.pending()
    await s.open()
    assert s.is_open
    await s.close()
    await s.close()
    assert not s.is_open


async def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot"):
        await Store(f"sqlite:///{blocker}/sub/x.db").open()
