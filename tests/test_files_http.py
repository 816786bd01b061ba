"""Files over the HTTP API (issue 13): multipart and JSON attachments reach the model; the
limits answer with Livia's own sentences; drawn images are served; plus the pure parts
(the tile formula, type detection, the token's hosts, document trimming)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from livia.files import slack_token_may_go
from livia.files.documents import extract_text
from livia.files.images import image_tokens
from livia.files.kinds import classify
from tests.files_samples import docx, pdf, png, voice


def _user_content(srv: Any) -> Any:
    return srv.model_requests[-1]["messages"][-1]["content"]


async def test_multipart_image_and_json_voice_reach_the_model(
    livia_server: Any, tmp_path: Path
) -> None:
    srv = await livia_server(latency=0.05, files={"spool_dir": str(tmp_path / "files")})
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        resp = await client.post(
            "/v1/chat",
            data={"conversation_id": "f1", "user_id": "ann", "text": "what is this?"},
            files=[("file", ("chart.png", png(1024, 1024), "image/png"))],
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["reply"].startswith("I can see the image you sent (PNG).")
        [text, image] = _user_content(srv)
        assert text == {"type": "text", "text": "what is this?"}
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        # The store keeps a reference, not the bytes; the bytes wait in the spool.
        spooled = list((tmp_path / "files" / "in").iterdir())
        assert len(spooled) == 1 and spooled[0].read_bytes().startswith(b"\x89PNG")

        clip = base64.b64encode(voice("Remind me to water the roses")).decode()
        body = {
            "conversation_id": "f2",
            "user_id": "ann",
            "attachments": [{"name": "memo.webm", "content_type": "audio/webm", "data": clip}],
        }
        reply = (await client.post("/v1/chat", json=body)).json()["reply"]
        assert reply.startswith('🎙️ I heard (memo.webm): "Remind me to water the roses"')
        content = _user_content(srv)
        assert isinstance(content, str) and "Remind me to water the roses" in content
        assert srv.sim.transcription.requests == 1
        stats = (await client.get("/stats")).json()["upstreams"]
        assert stats["transcription"]["total_requests"] == 1  # shown once used
        metrics = (await client.get("/metrics")).text
        assert 'api="transcription"' in metrics
        schema = (await client.get("/openapi.json")).json()
        body = schema["paths"]["/v1/chat"]["post"]["requestBody"]["content"]
        assert "attachments" in body["application/json"]["schema"]["properties"]
        assert "file" in body["multipart/form-data"]["schema"]["properties"]


async def test_documents_are_read_and_trimmed_with_a_note(
    livia_server: Any, tmp_path: Path
) -> None:
    srv = await livia_server(
        latency=0.05, llm={"history_tokens": 1000}, files={"spool_dir": str(tmp_path)}
    )
    long_pdf = pdf([f"Page {i} says " + "words " * 200 for i in range(1, 11)])
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        resp = await client.post(
            "/v1/chat",
            data={"conversation_id": "d1", "user_id": "ann", "text": "summarise"},
            files=[
                ("file", ("long.pdf", long_pdf, "application/pdf")),
                (
                    "file",
                    ("notes.docx", docx(["Buy milk", "Call Bob"]), "application/octet-stream"),
                ),
            ],
        )
        reply = resp.json()["reply"]
        assert "📄 long.pdf is long: I read the first" in reply
        assert "the rest was cut to fit" in reply
        assert "I read long.pdf. I read notes.docx." in reply
        content = _user_content(srv)
        assert "Page 1 says" in content and "Page 10 says" not in content
        assert "Buy milk\nCall Bob" in content


async def test_over_size_unsupported_and_too_many_files_get_a_sentence(
    livia_server: Any, tmp_path: Path
) -> None:
    srv = await livia_server(
        latency=0.05, files={"max_bytes": 50_000, "max_files": 2, "spool_dir": str(tmp_path)}
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        resp = await client.post(
            "/v1/chat",
            data={"conversation_id": "r1", "user_id": "ann", "text": "look"},
            files=[
                ("file", ("big.png", png(2000, 2000, (1, 2, 3)) + b"\0" * 60_000, "image/png")),
                ("file", ("movie.mov", b"\0\0\0\x14ftypqt", "video/quicktime")),
                ("file", ("small.png", png(10, 10), "image/png")),
            ],
        )
        reply = resp.json()["reply"]
        assert "I couldn't take big.png: it is" in reply and "over the 49 KB limit" in reply
        assert "I couldn't read movie.mov: MOV files aren't something I can read." in reply
        assert "I take at most 2 files per message, so I left out small.png." in reply
        assert "look" in str(_user_content(srv))  # the words are still answered

        # Only files: no text needed; a refused-only message is answered by its sentences.
        bad = {
            "conversation_id": "r2",
            "user_id": "ann",
            "attachments": [{"name": "x.exe", "data": base64.b64encode(b"MZ").decode()}],
        }
        only = (await client.post("/v1/chat", json=bad)).json()
        assert only["reply"].startswith("I couldn't read x.exe: EXE files")
        empty = await client.post("/v1/chat", json={"conversation_id": "r3", "user_id": "a"})
        assert empty.status_code == 422
        broken = {**bad, "attachments": [{"name": "a.png", "data": "not base64!"}]}
        assert (await client.post("/v1/chat", json=broken)).status_code == 422


async def test_draw_shows_the_image_on_the_web(livia_server: Any, tmp_path: Path) -> None:
    srv = await livia_server(latency=0.05, files={"spool_dir": str(tmp_path)})
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        body = {"conversation_id": "g1", "user_id": "ann", "text": "Draw a purple owl"}
        reply = (await client.post("/v1/chat", json=body)).json()["reply"]
        assert reply.startswith("Here is a purple owl:\n\n![a purple owl](/v1/files/generated/")
        url = reply.split("](", 1)[1].rstrip(")")
        image = await client.get(url)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        assert image.headers["content-type"] == "image/png"
        assert (await client.get("/v1/files/generated/../../livia.db")).status_code == 404
        stats = (await client.get("/stats")).json()["upstreams"]
        assert stats["images"]["total_requests"] == 1
        assert srv.sim.images.requests == 1


# --- the pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((1024, 1024), 765),  # OpenAI's worked examples
        ((2048, 4096), 1105),
        ((512, 512), 255),
        ((4096, 8192), 1105),
        ((100, 100), 255),
    ],
)
def test_the_tile_formula(size: tuple[int, int], tokens: int) -> None:
    assert image_tokens(*size) == tokens
    assert image_tokens(*size, detail="low") == 85


def test_types_by_name_then_content_type() -> None:
    assert classify("a.PNG") == ("image", "image/png")
    assert classify("voice", "audio/webm") == ("audio", "audio/webm")
    assert classify("clip.m4a", "application/octet-stream") == ("audio", "audio/mp4")
    assert classify("notes.md", "application/octet-stream") == ("document", "text/markdown")
    assert classify("a.exe", "application/x-msdownload") is None
    assert classify("movie.mov", "video/quicktime") is None


def test_the_bot_token_goes_only_to_slack_or_the_configured_api_host() -> None:
    api = "https://slack.com/api/"
    assert slack_token_may_go("https://files.slack.com/files-pri/T1-F1/a.png", api)
    assert not slack_token_may_go("http://files.slack.com/files-pri/T1-F1/a.png", api)
    assert not slack_token_may_go("https://evil.example/slack.com/a.png", api)
    assert not slack_token_may_go("https://files.slack.com.evil.example/a.png", api)
    local = "http://127.0.0.1:5555/api/"
    assert slack_token_may_go("http://127.0.0.1:5555/files-pri/F1/a.png", local)
    assert not slack_token_may_go("http://127.0.0.1:6666/files-pri/F1/a.png", local)


def test_text_documents_are_cut_at_the_budget() -> None:
    doc = extract_text(("ab" * 1000).encode(), "txt", max_chars=100)
    assert (len(doc.text), doc.total_chars, doc.cut) == (100, 2000, True)
    assert extract_text("é,1\n".encode("utf-8-sig"), "csv", max_chars=100).text == "é,1\n"


def test_the_slack_manifest_asks_for_the_file_scopes() -> None:
    manifest = (Path(__file__).parent.parent / "slack-app-manifest.yaml").read_text()
    assert "- files:read #" in manifest and "- files:write #" in manifest
    guide = (Path(__file__).parent.parent / "docs" / "slack.md").read_text()
    assert "| `files:read` |" in guide and "| `files:write` |" in guide


def test_an_images_cost_is_its_tiles_not_its_data_urls_length() -> None:
    from unittest.mock import Mock

    from livia.agent.model import ModelClient
    from livia.config import LlmConfig
    from livia.files.images import data_url

    model = ModelClient(LlmConfig(max_output_tokens=100), Mock(), Mock())
    words = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}]}]
    image = {"type": "image_url", "image_url": {"url": data_url(png(2048, 4096), "image/png")}}
    with_image = [{"role": "user", "content": [*words[0]["content"], image]}]
    assert model.estimate_cost(with_image, []) - model.estimate_cost(words, []) == 1105
