"""Identity (issue 10, item 1; OWASP API1 is the bar): users' keys and who may reach what.

- keys made by the real `livia keys` command (a subprocess on the same SQLite file the
  server uses), listed without the key, revoked at once for a running server
- a user key acts as its user only (another user_id: 403); the operator's token acts for
  anyone; a revoked or unknown key is a 401
- a conversation belongs to the user who started it: other users get the same 404 as for
  a missing one when reading, writing, listing or deleting it
- the store's part on SQLite and PostgreSQL
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from livia.identity import Identity, Principal, Unauthenticated, hash_key, key_id_of
from livia.store import Store

OPERATOR = "operator-t0ken-for-tests"


def _keys_cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `livia keys …` on the SQLite file `db`."""
    env = {**os.environ, "LIVIA_STORE__URL": f"sqlite:///{db}"}
    env.pop("LIVIA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "livia", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _new_key(db: Path, user: str) -> str:
    done = _keys_cli(db, "create", user)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("livia_") and " " not in key
    return key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _chat(cid: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"conversation_id": cid, "text": text, **extra}


def _error(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = resp.json()["error"]
    assert error["type"] == type_ and error["message"], error
    return error


# --- the CLI -----------------------------------------------------------------------------


async def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    key = _new_key(db, "ann")
    key_id = key_id_of(key)
    assert key_id is not None
    async with Store(f"sqlite:///{db}") as store:
        await Identity(store).create_key("bob")

    listed = _keys_cli(db, "list")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and "ann" in listed.stdout and "bob" in listed.stdout
    assert "livia_" not in listed.stdout  # never a key, only ids
    rows = json.loads(_keys_cli(db, "list", "--json", "--user", "ann").stdout)
    assert [(r["key_id"], r["user_id"], r["revoked_at"]) for r in rows] == [(key_id, "ann", None)]
    assert rows[0]["created_at"].endswith("Z") and rows[0]["last_used_at"] is None

    revoked = _keys_cli(db, "revoke", key_id)
    assert revoked.returncode == 0 and "Revoked" in revoked.stdout
    missing = _keys_cli(db, "revoke", "000000000000")
    assert missing.returncode == 1 and "no key" in missing.stderr and not missing.stdout
    async with Store(f"sqlite:///{db}") as store:
        (ann,) = await Identity(store).keys(user_id="ann")
        assert ann.revoked and await Identity(store).verify(key) is None

    # only the hash is stored: the key itself is nowhere in the database file
    assert key.encode() not in db.read_bytes()
    assert hash_key(key).encode() in db.read_bytes()

    bad = _keys_cli(db, "create", "slack:U1")
    assert bad.returncode == 2 and "Slack" in bad.stderr


# --- the store and Identity, on SQLite and PostgreSQL ------------------------------------


async def test_store_keys_and_owners(store_url: str) -> None:
    async with Store(store_url) as store:
        identity = Identity(store)
        assert not await store.any_api_keys()
        assert await identity.principal(None, "127.0.0.1") == Principal("local")

        ann, ann_key = await identity.create_key("ann")
        _bob, bob_key = await identity.create_key("bob")
        assert await store.any_api_keys()
        found = await identity.verify(ann_key)
        assert found is not None and found.user_id == "ann" and found.key_id == ann.key_id
        assert (await identity.keys(user_id="ann"))[0].last_used_at is not None  # touched
        assert await identity.verify(ann_key[:-1] + "x") is None  # one character off
        assert await identity.verify("livia_nothing") is None
        assert await identity.principal(f"Bearer {bob_key}", None) == Principal(
            "user", user_id="bob", key_id=_bob.key_id
        )
        with pytest.raises(Unauthenticated):
            await identity.principal(None, "127.0.0.1")  # keys exist: a credential is needed

        revoked = await identity.revoke(ann.key_id)
        assert revoked is not None and revoked.revoked
        assert await identity.verify(ann_key) is None
        assert await identity.revoke("000000000000") is None
        assert await store.any_api_keys()  # revoked keys keep the server closed

        # ownership: the first to reserve a conversation owns it, atomically
        owners = await asyncio.gather(
            *(store.reserve_conversation("c1", user, "http", "hi") for user in ("ann", "bob"))
        )
        assert owners[0] == owners[1] in ("ann", "bob")
        assert await store.reserve_conversation("c1", "carol", "http", "x") == owners[0]
        # an empty (reserved) conversation is not listed, and deleting it is "missing"
        assert await store.list_user_conversations() == []
        assert await store.delete_idle_conversation("c1") == "missing"
        assert await store.delete_idle_conversation("nope") == "missing"


async def test_operator_token_and_local_only(tmp_path: Path) -> None:
    async with Store(f"sqlite:///{tmp_path}/s.db") as store:
        identity = Identity(store, OPERATOR)
        assert await identity.principal(f"Bearer {OPERATOR}", "10.1.2.3") == Principal("operator")
        with pytest.raises(Unauthenticated) as refused:
            await identity.principal("Bearer wrong", "127.0.0.1")
        assert refused.value.status == 401
    async with Store(f"sqlite:///{tmp_path}/open.db") as store:
        open_identity = Identity(store)  # no token, no keys: this machine only
        assert await open_identity.principal(None, "::1") == Principal("local")
        with pytest.raises(Unauthenticated) as remote:
            await open_identity.principal(None, "192.168.1.20")
        assert (remote.value.status, remote.value.type) == (403, "local_only")
        assert "livia keys create" in remote.value.message


# --- over HTTP: who may read and write what ----------------------------------------------


async def test_user_keys_decide_the_user_and_own_conversations(
    livia_server: Any, tmp_path: Path
) -> None:
    db = tmp_path / "livia.db"  # the file the livia_server fixture uses
    ann, bob = _new_key(db, "ann"), _new_key(db, "bob")
    srv = await livia_server(server={"api_token": OPERATOR})
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        # the key decides the user: no user_id needed, the key's own is fine, another is 403
        first = await client.post(
            "/v1/chat", json=_chat("ann-1", "my secret plan"), headers=_bearer(ann)
        )
        assert first.status_code == 200, first.text
        same = _chat("ann-1", "more", user_id="ann")
        assert (await client.post("/v1/chat", json=same, headers=_bearer(ann))).status_code == 200
        posing = await client.post(
            "/v1/chat", json=_chat("ann-2", user_id="bob"), headers=_bearer(ann)
        )
        assert "ann" in _error(posing, 403, "forbidden")["message"]
        me = (await client.get("/v1/me", headers=_bearer(ann))).json()
        assert (me["auth"], me["user_id"]) == ("user", "ann")

        # Bob cannot read, write, stream into or delete Ann's conversation: 404, as if absent
        missing = await client.get("/v1/conversations/nobody-here", headers=_bearer(bob))
        read = await client.get("/v1/conversations/ann-1", headers=_bearer(bob))
        _error(read, 404, "unknown_conversation")
        assert read.json()["error"]["message"].replace("ann-1", "X") == missing.json()["error"][
            "message"
        ].replace("nobody-here", "X")
        calls = srv.sim.stats.requests
        write = await client.post("/v1/chat", json=_chat("ann-1", "hijack"), headers=_bearer(bob))
        _error(write, 404, "unknown_conversation")
        streamed = await client.post(
            "/v1/chat", json=_chat("ann-1", "hijack", stream=True), headers=_bearer(bob)
        )
        _error(streamed, 404, "unknown_conversation")
        delete = await client.delete("/v1/conversations/ann-1", headers=_bearer(bob))
        _error(delete, 404, "unknown_conversation")
        assert srv.sim.stats.requests == calls  # nothing of Bob's reached the model
        listed = (await client.get("/v1/conversations", headers=_bearer(bob))).json()
        assert listed == {"conversations": []}
        other = await client.get("/v1/conversations?user_id=ann", headers=_bearer(bob))
        _error(other, 403, "forbidden")

        # Ann sees hers; her history was not touched by Bob
        mine = (await client.get("/v1/conversations", headers=_bearer(ann))).json()
        assert [c["conversation_id"] for c in mine["conversations"]] == ["ann-1"]
        history = (await client.get("/v1/conversations/ann-1", headers=_bearer(ann))).json()
        assert [m["content"] for m in history["messages"] if m["role"] == "user"] == [
            "my secret plan",
            "more",
        ]
        assert {m.get("user_id") for m in history["messages"] if m["role"] == "user"} == {"ann"}

        # the operator acts for anyone and sees everything
        op = _bearer(OPERATOR)
        as_bob = await client.post("/v1/chat", json=_chat("bob-1", user_id="bob"), headers=op)
        assert as_bob.status_code == 200
        _error(await client.post("/v1/chat", json=_chat("x"), headers=op), 422, "invalid_request")
        everyone = (await client.get("/v1/conversations", headers=op)).json()["conversations"]
        assert {c["conversation_id"] for c in everyone} == {"ann-1", "bob-1"}
        only_bob = (await client.get("/v1/conversations?user_id=bob", headers=op)).json()
        assert [c["conversation_id"] for c in only_bob["conversations"]] == ["bob-1"]
        assert (await client.get("/v1/conversations/ann-1", headers=op)).status_code == 200
        # ...and Bob now reads the conversation started for him
        assert (
            await client.get("/v1/conversations/bob-1", headers=_bearer(bob))
        ).status_code == 200

        # no credential, a wrong one: 401; monitoring wants the operator's token
        _error(await client.get("/v1/conversations"), 401, "unauthorized")
        _error(await client.post("/v1/chat", json=_chat("z", user_id="ann")), 401, "unauthorized")
        _error(await client.get("/v1/me", headers=_bearer(ann + "x")), 401, "unauthorized")
        _error(await client.get("/stats", headers=_bearer(ann)), 401, "unauthorized")
        assert (await client.get("/stats", headers=op)).status_code == 200

        # revoked by the CLI while the server runs: refused at the next request
        revoke = _keys_cli(db, "revoke", key_id_of(ann) or "")
        assert revoke.returncode == 0, revoke.stderr
        gone = await client.get("/v1/conversations", headers=_bearer(ann))
        assert "revoked" in _error(gone, 401, "unauthorized")["message"]
        assert gone.headers["www-authenticate"] == "Bearer"


async def test_keys_without_an_operator_token(livia_server: Any, tmp_path: Path) -> None:
    srv = await livia_server()
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        # nothing configured: local callers name any user
        open_chat = await client.post("/v1/chat", json=_chat("c0", user_id="zed"))
        assert open_chat.status_code == 200
        assert (await client.get("/v1/me")).json()["auth"] == "local"
        assert (await client.get("/stats")).status_code == 200
        # a key made while the server runs closes it within a second
        key = _new_key(tmp_path / "livia.db", "ann")
        await asyncio.sleep(1.1)
        _error(await client.post("/v1/chat", json=_chat("c1", user_id="zed")), 401, "unauthorized")
        _error(await client.get("/v1/conversations/c0"), 401, "unauthorized")
        # monitoring: no operator token, so any valid key
        _error(await client.get("/stats"), 401, "unauthorized")
        assert (await client.get("/stats", headers=_bearer(key))).status_code == 200
        assert (await client.get("/metrics", headers=_bearer(key))).status_code == 200
        # zed's conversation (started before keys) is not ann's
        _error(
            await client.get("/v1/conversations/c0", headers=_bearer(key)),
            404,
            "unknown_conversation",
        )
