"""The store on SQLite and PostgreSQL: inbox, claims and leases, history, marks, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from livia.conversations.types import IncomingMessage, Reply
from livia.store import Store, StoredTurn, StoreError, parse_store_url, sqlite_path


def _msg(mid: str, cid: str = "c1", text: str = "hi") -> IncomingMessage:
    return IncomingMessage(cid, "u1", text, mid, channel="slack", meta={"ts": "1.2"})


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url)
    await s.open()
    yield s
    await s.close()


def test_url_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sqlite_path("sqlite:///var/livia.db") == "var/livia.db"
    assert sqlite_path("sqlite:////tmp/x.db") == "/tmp/x.db"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    with pytest.raises(StoreError, match="unsupported"):
        sqlite_path("postgres://x/y")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    pg = parse_store_url("postgresql://livia@db.example:5433/livia")
    assert pg.backend == "postgresql" and pg.engine_url.password == "s3cret"
    assert pg.engine_url.drivername == "postgresql+asyncpg"
    shown = parse_store_url("postgresql://livia:hunter2@db:5432/livia").display
    assert "hunter2" not in shown and "db:5432" in shown
    with pytest.raises(StoreError, match="names no database"):
        parse_store_url("postgresql://livia@db:5432")
    with pytest.raises(StoreError, match="unsupported"):
        parse_store_url("mysql://x/y")


async def test_open_creates_parent_dir_and_uses_wal(tmp_path: Path) -> None:
    db_file = tmp_path / "sub" / "dir" / "livia.db"
    async with Store(f"sqlite:///{db_file}"):
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
    first = await store.accept(_msg("m0", text="t0"), claim=True)
    assert first.turn.owner == store.owner and first.turn.attempts == 1
    for i in (1, 2):  # not the conversation's oldest pending message: not claimed
        assert (await store.accept(_msg(f"m{i}", text=f"t{i}"), claim=True)).turn.owner is None
    done = await store.complete(Reply("c1", "m0", "r0"), claim_next=True)
    assert done.stored and done.acceptor_alive and done.next is not None
    assert done.next.message_id == "m1" and done.next.owner == store.owner
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


async def test_state_survives_reopen(store_url: str) -> None:
    async with Store(store_url) as s:
        await s.accept(_msg("m1"), claim=True)
    async with Store(store_url) as s:
        assert [t.message_id for t in await s.pending()] == ["m1"]
        # the closed store gave its claim back: a new process takes it at once
        assert [t.message_id for t in await s.claim_ready(10)] == ["m1"]


async def test_only_a_live_owner_holds_a_claim(store_url: str) -> None:
    async with Store(store_url, lease=0.5) as a, Store(store_url, lease=0.5) as b:
        await a.accept(_msg("m1", cid="x"), claim=True)
        await a.accept(_msg("m1", cid="y"))  # unclaimed: anyone alive may take it
        await a.accept(_msg("m2", cid="y"))  # behind m1 of y: never before it
        taken = await b.claim_ready(10)
        assert [(t.conversation_id, t.message_id) for t in taken] == [("y", "m1")]
        assert await b.claim_ready(10) == []  # x/m1 is a's while a's heartbeat is fresh
        # b cannot store a reply to a's message; a can
        assert not (await b.complete(Reply("x", "m1", "not yours"))).stored
        await asyncio.sleep(0.7)  # a stops heartbeating: its lease runs out
        await b.heartbeat()
        stolen = await b.claim_ready(10)
        assert [(t.conversation_id, t.message_id, t.attempts) for t in stolen] == [("x", "m1", 2)]
        # fencing: a's late reply is refused, b's is stored once
        assert not (await a.complete(Reply("x", "m1", "late"))).stored
        assert (await b.complete(Reply("x", "m1", "on time"))).stored
        assert (await a.get("x", "m1")).reply == "on time"  # type: ignore[union-attr]


async def test_concurrent_claims_take_each_message_once(store_url: str) -> None:
    async with Store(store_url) as writer:
        for c in range(30):
            for m in range(2):
                await writer.accept(_msg(f"m{m}", cid=f"c{c}"))
        stores = [Store(store_url) for _ in range(3)]
        for s in stores:
            await s.open()
        batches: list[list[StoredTurn]] = []
        try:
            while True:  # racing rounds until nothing is left to claim
                round_ = await asyncio.gather(*(s.claim_ready(7) for s in stores for _ in range(3)))
                if not any(round_):
                    break
                batches.extend(round_)
        finally:
            for s in stores:
                await s.close()
    claimed = [(t.conversation_id, t.message_id) for batch in batches for t in batch]
    assert len(claimed) == len(set(claimed))  # nobody took a message twice
    assert all(mid == "m0" for _, mid in claimed)  # only each conversation's oldest
    assert len(claimed) == 30


async def test_same_message_id_accepted_at_once_is_one_row(store_url: str) -> None:
    async with Store(store_url) as a, Store(store_url) as b:
        results = await asyncio.gather(
            *(s.accept(_msg("same", cid="c"), claim=True) for s in (a, b) for _ in range(5))
        )
    assert sum(r.created for r in results) == 1
    assert len({r.turn.seq for r in results}) == 1


async def test_orphaned_reply_delivery_is_taken_once(store_url: str) -> None:
    async with Store(store_url) as live:
        gone = Store(store_url)
        await gone.open()
        await gone.accept(_msg("m1"), claim=True)
        await gone.complete(Reply("c1", "m1", "hi"), delivered=False)
        await gone.close()  # its acceptor left before delivering
        taken = await live.take_deliveries(["slack"])
        assert [t.message_id for t in taken] == ["m1"]
        assert await live.take_deliveries(["slack"]) == []  # now it is live's to deliver
        # ...once: the process that took it (its takeover scan) cannot take it again (the
        # turn that answered it, in the same process, delivering a second time: kill -9 test)
        assert await live.take_delivery(taken[0].seq) is None
        await live.mark_delivered(taken[0].seq)
        assert (await live.get("c1", "m1")).delivered  # type: ignore[union-attr]


async def test_instances_publish_snapshots(store_url: str) -> None:
    async with (
        Store(store_url, instance_id="web-1") as a,
        Store(store_url, instance_id="web-2") as b,
    ):
        await a.heartbeat({"conversations": {"answered": 3}})
        await b.heartbeat({"conversations": {"answered": 4}})
        live = {i.instance_id: i.snapshot for i in await a.instances()}
        assert live == {
            "web-1": {"conversations": {"answered": 3}},
            "web-2": {"conversations": {"answered": 4}},
        }
    async with Store(store_url) as c:
        assert [i.instance_id for i in await c.instances()] == [c.instance_id]


async def test_conversations_are_listed_newest_first_and_deleted(store: Store) -> None:
    await store.accept(_msg("m1", cid="old", text="first   question"))
    await asyncio.sleep(0.01)
    await store.accept(IncomingMessage("new", "u2", "hello", "m1"))
    listed = await store.list_conversations()
    assert [(c.conversation_id, c.messages) for c in listed] == [("new", 1), ("old", 1)]
    assert listed[1].title == "first question" and listed[1].user_id == "u1"
    assert [c.conversation_id for c in await store.list_conversations(user_id="u2")] == ["new"]
    assert await store.delete_conversation("old")
    assert not await store.delete_conversation("old")
    assert await store.turns("old") == []


async def test_seen_marks_once_even_under_a_burst(store: Store) -> None:
    results = await asyncio.gather(*(store.seen("slack:Ev1") for _ in range(20)))
    assert results.count(False) == 1
    assert await store.seen("slack:Ev2", ttl=0.0) is False
    await asyncio.sleep(0.01)
    assert await store.seen("slack:Ev2") is False  # the first mark had expired


async def test_closed_store_says_so(store_url: str) -> None:
    s = Store(store_url)
    with pytest.raises(StoreError, match="closed"):
        await s.pending()
    await s.open()
    assert s.is_open
    await s.close()
    await s.close()
    assert not s.is_open


async def test_a_dropped_database_connection_is_a_store_error_then_replaced(postgres: Any) -> None:
    """The hot path's statements go to asyncpg directly: a connection the server drops
    surfaces as `StoreError` (no driver exception), and the next call gets a new one."""
    import asyncpg

    url = postgres.new_database()
    async with Store(url) as s:
        await s.accept(_msg("m1"), claim=True)
        await s.turns("c1")
        admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        failures = 0
        mids = [f"m{i}" for i in range(2, 14)]  # through every lane of the hot path
        for mid in mids:  # a broken lane fails once, then reconnects
            for _ in range(20):
                try:
                    await s.accept(_msg(mid))
                    break
                except StoreError as exc:
                    assert "store write failed" in str(exc)
                    failures += 1
        for _ in range(20):
            try:
                turns = await s.turns("c1")
                break
            except StoreError as exc:
                assert "store read failed" in str(exc)
        assert failures >= 1
        assert [t.message_id for t in turns] == ["m1", *mids]


async def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot"):
        await Store(f"sqlite:///{blocker}/sub/x.db").open()


#: The schema `livia serve` wrote before migrations existed (PRAGMA user_version 1).
_V1_SCHEMA = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL, message_id TEXT NOT NULL, user_id TEXT NOT NULL,
    channel TEXT NOT NULL, text TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending', reply TEXT, error TEXT,
    received_at REAL NOT NULL, answered_at REAL,
    UNIQUE (conversation_id, message_id)
);
CREATE INDEX messages_pending ON messages (status) WHERE status = 'pending';
CREATE TABLE marks (key TEXT PRIMARY KEY, expires REAL NOT NULL);
PRAGMA user_version=1;
"""


async def test_an_existing_v1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    db_file = tmp_path / "var" / "livia.db"
    db_file.parent.mkdir()
    with sqlite3.connect(db_file) as conn:
        conn.executescript(_V1_SCHEMA)
        rows = [
            ("c1", "m1", "u1", "http", "hello", "answered", "hi", 1.0, 2.0),
            ("c1", "m2", "u1", "http", "again", "pending", None, 3.0, None),
            ("c2", "e1", "u2", "slack", "yo", "failed", "sorry", 4.0, 5.0),
        ]
        conn.executemany(
            "INSERT INTO messages (conversation_id, message_id, user_id, channel, text, status,"
            " reply, received_at, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("INSERT INTO marks VALUES ('slack:event:Ev1', 9e12)")
    async with Store(f"sqlite:///{db_file}") as s:
        turns = await s.turns("c1") + await s.turns("c2")
        assert [(t.message_id, t.status, t.reply, t.delivered) for t in turns] == [
            ("m1", "answered", "hi", True),
            ("m2", "pending", None, False),
            ("e1", "failed", "sorry", True),
        ]
        assert await s.seen("slack:event:Ev1")  # marks kept
        convs = {c.conversation_id: c for c in await s.list_conversations()}
        assert (convs["c1"].messages, convs["c1"].title, convs["c1"].user_id) == (2, "hello", "u1")
        assert [t.message_id for t in await s.claim_ready(5)] == ["m2"]
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0003"
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3
    async with Store(f"sqlite:///{db_file}") as s:  # a second start finds the schema current
        assert len(await s.pending()) == 1
