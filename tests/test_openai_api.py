"""The OpenAI-compatible API, driven by the official `openai` client against a real server.

`POST /v1/chat/completions` streamed and not, stateless (the request's messages are the
history) and on a server-side conversation (`X-Livia-Conversation`), `Idempotency-Key`
(a repeat costs no model call), `GET /v1/models`; errors come back as the client's own
exceptions; a user key decides the user here too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.test_identity import _new_key


def _client(srv: Any, api_key: str = "unused", **kwargs: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{srv.url}/v1", api_key=api_key, max_retries=0, **kwargs)


def _sent_to_model(srv: Any) -> list[tuple[str, str]]:
    """The (role, content) pairs of the last request Livia sent to the model, system left out."""
    return [
        (m["role"], m["content"])
        for m in srv.model_requests[-1]["messages"]
        if m["role"] != "system"
    ]


async def test_models_and_a_stateless_completion(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    async with _client(srv) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["livia"]
        assert (await client.models.retrieve("livia")).id == "livia"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4o")

        raw = await client.chat.completions.with_raw_response.create(
            model="livia",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "my dog is called Rex"},
                {"role": "assistant", "content": "Nice name!"},
                {"role": "user", "content": [{"type": "text", "text": "tell me about gardening"}]},
            ],
        )
        completion = raw.parse()
        assert completion.object == "chat.completion" and completion.model == "livia"
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and choice.message.role == "assistant"
        assert "gardening" in (choice.message.content or "")
        conversation = raw.headers["x-livia-conversation"]
        assert conversation.startswith("oai-")
        # the earlier messages reached the model as context, before the question
        assert _sent_to_model(srv) == [
            ("user", "my dog is called Rex"),
            ("assistant", "Nice name!"),
            ("user", "tell me about gardening"),
        ]
        extra = completion.model_extra or {}
        assert extra["livia"]["conversation_id"] == conversation

        with pytest.raises(openai.NotFoundError) as wrong_model:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert "livia" in str(wrong_model.value)
        with pytest.raises(openai.UnprocessableEntityError):
            await client.chat.completions.create(
                model="livia", messages=[{"role": "assistant", "content": "no question"}]
            )


async def test_streamed_completion(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    async with _client(srv) as client:
        stream = await client.chat.completions.create(
            model="livia",
            messages=[{"role": "user", "content": "explain compost"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices  # include_usage
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert len([c for c in with_choices if c.choices[0].delta.content]) > 3  # really streamed
    history = srv.livia.store
    (info,) = await history.list_user_conversations(user_id="openai")
    (turn,) = await history.turns(info.conversation_id)
    assert turn.reply == text  # what streamed is what was stored


async def test_idempotency_key_repeats_without_a_model_call(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    messages = [{"role": "user", "content": "create a task to call Bob"}]
    async with _client(srv) as client:
        key = {"Idempotency-Key": "req-0001"}
        first = await client.chat.completions.create(
            model="livia", messages=messages, extra_headers=key
        )
        calls = len(srv.model_requests)
        again = await client.chat.completions.create(
            model="livia", messages=messages, extra_headers=key
        )
        streamed = await client.chat.completions.create(
            model="livia", messages=messages, extra_headers=key, stream=True
        )
        streamed_text = "".join(
            [c.choices[0].delta.content or "" async for c in streamed if c.choices]
        )
        assert len(srv.model_requests) == calls  # no second model call, streamed or not
        assert again.id == first.id and again.created == first.created
        assert again.choices[0].message.content == first.choices[0].message.content
        assert streamed_text == first.choices[0].message.content
        assert (again.model_extra or {})["livia"]["duplicate"] is True
        # the same key for another question is a conflict, not a silent repeat
        with pytest.raises(openai.ConflictError):
            await client.chat.completions.create(
                model="livia",
                messages=[{"role": "user", "content": "something else"}],
                extra_headers=key,
            )
        # the key is per user: another user's same key is another message
        other = await client.chat.completions.create(
            model="livia", messages=messages, extra_headers=key, user="carol"
        )
        assert other.id != first.id and len(srv.model_requests) == calls + 1


async def test_a_server_side_conversation_by_header(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    async with _client(srv, default_headers={"X-Livia-Conversation": "oc-1"}) as client:
        first = await client.chat.completions.create(
            model="livia", messages=[{"role": "user", "content": "my cat is Tom"}], user="dan"
        )
        # a front-end sends the whole conversation again: Livia's own history is used
        await client.chat.completions.create(
            model="livia",
            user="dan",
            messages=[
                {"role": "user", "content": "my cat is Tom"},
                {"role": "assistant", "content": first.choices[0].message.content or ""},
                {"role": "user", "content": "what is my cat called?"},
            ],
        )
    assert _sent_to_model(srv) == [
        ("user", "my cat is Tom"),
        ("assistant", first.choices[0].message.content),
        ("user", "what is my cat called?"),
    ]
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        history = (await http.get("/v1/conversations/oc-1")).json()
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2
        listed = (await http.get("/v1/conversations?user_id=dan")).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["oc-1"]
        # metadata.conversation_id works like the header; slack: ids are refused
        body = {
            "model": "livia",
            "messages": [{"role": "user", "content": "third"}],
            "metadata": {"conversation_id": "oc-1"},
            "user": "dan",
        }
        resp = await http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200 and resp.headers["x-livia-conversation"] == "oc-1"
        slack = await http.post(
            "/v1/chat/completions",
            json={**body, "metadata": {"conversation_id": "slack:T1:C1:1.0"}},
        )
        assert slack.status_code == 403 and slack.json()["error"]["type"] == "forbidden"


async def test_user_keys_on_the_openai_api(livia_server: Any, tmp_path: Path) -> None:
    ann = _new_key(tmp_path / "livia.db", "ann")
    bob = _new_key(tmp_path / "livia.db", "bob")
    srv = await livia_server(latency=0.05)
    question = [{"role": "user", "content": "hello"}]
    async with _client(srv, api_key=ann) as as_ann, _client(srv, api_key=bob) as as_bob:
        done = await as_ann.chat.completions.with_raw_response.create(
            model="livia", messages=question, extra_headers={"X-Livia-Conversation": "ann-oc"}
        )
        assert done.status_code == 200
        with pytest.raises(openai.PermissionDeniedError):
            await as_ann.chat.completions.create(model="livia", messages=question, user="bob")
        with pytest.raises(openai.NotFoundError):  # Ann's conversation is absent for Bob
            await as_bob.chat.completions.create(
                model="livia", messages=question, extra_headers={"X-Livia-Conversation": "ann-oc"}
            )
        async with _client(srv, api_key="livia_000000000000_nope") as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.models.list()
    (turn,) = await srv.livia.store.turns("ann-oc")
    assert turn.user_id == "ann"


async def test_many_clients_at_once_share_the_dispatcher(livia_server: Any) -> None:
    srv = await livia_server(latency=0.3)
    async with _client(srv) as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="livia", messages=[{"role": "user", "content": f"question {i}"}]
                )
                for i in range(6)
            )
        )
    assert all(r.choices[0].message.content for r in replies)
    stats = srv.livia.conversations.stats()
    assert stats["answered"] == 6 and stats["accepted"] == 6
