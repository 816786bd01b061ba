"""Files in Slack (issue 13), with real parts: the Bolt app behind a real HTTP server, the
simulated Slack (file shares, downloads, uploads), the real agent on the simulated OpenAI
server (chat, transcriptions, image generations), the real manager, conversations, store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from livia.sim.media import SimEndpointLimits
from livia.sim.openai import SimOpenAI, SimOpenAIConfig
from tests.files_samples import pdf, png, voice
from tests.test_slack import BOT_TOKEN, LIVIA, make_settings, slack_env, slack_rig

__all__ = ["slack_env"]  # the autouse fixture: Slack's tokens in the environment


def _last_user_content(model: SimOpenAI) -> Any:
    body = model.requests[-1]
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


async def test_image_voice_and_pdf_each_reach_the_model_in_their_form(tmp_path: Path) -> None:
    config = SimOpenAIConfig(latency=0.05, record=10)
    async with SimOpenAI(config) as model:
        settings = make_settings(tmp_path, model_url=model.url, files={"spool_dir": str(tmp_path)})
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            sim = rig.sim
            files = [
                sim.files.add("screenshot.png", png(800, 600), "image/png"),
                sim.files.add("voice.wav", voice("Please book a table for two"), "audio/wav"),
                sim.files.add(
                    "report.pdf", pdf(["Quarterly revenue was 42 million"]), "application/pdf"
                ),
            ]
            mention, twin = sim.file_share("C1", "U1", f"<@{LIVIA}> what about these?", files)
            for body in (mention, twin):  # Slack sends both; answered once
                assert (await rig.send(body))[0] == 200
            ts = mention["event"]["ts"]
            [reply] = await rig.replies("C1", ts, timeout=20)
            await rig.settle()

            # The reply says what was heard (first line quoted) and what the model saw.
            assert reply.text.startswith('🎙️ I heard (voice.wav): "Please book a table for two"')
            assert "I can see the image you sent (PNG)" in reply.text
            assert "I read report.pdf" in reply.text
            # One chat request: the image as an image_url part, transcript and text as text.
            assert model.stats.requests == 1
            content = _last_user_content(model)
            assert isinstance(content, list)
            [text_part, image_part] = content
            assert image_part["type"] == "image_url"
            assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
            assert "what about these?" in text_part["text"]
            assert "Please book a table for two" in text_part["text"]
            assert "Quarterly revenue was 42 million" in text_part["text"]
            # Downloads went to the simulator with the bot token, through the slack policy.
            downloads = sim.calls_to("files.download")
            assert len(downloads) == 3
            assert all(f.downloads == [BOT_TOKEN] for f in sim.files.files.values())
            assert rig.manager.get_stats("slack")["total_requests"] == len(sim.calls)
            # Transcription through its own policy, once.
            assert rig.manager.get_stats("transcription")["total_requests"] == 1
            assert model.transcription.requests == 1
            # The image's cost (tile formula: 800x600 = 4 tiles = 765 tokens) was reserved.
            assert rig.manager.get_stats("openai")["total_requests"] == 1


async def test_eight_people_sending_voice_notes_keep_transcription_concurrency(
    tmp_path: Path,
) -> None:
    limit = 2
    config = SimOpenAIConfig(
        latency=0.3, transcription=SimEndpointLimits(max_concurrent=limit), record=20
    )
    async with SimOpenAI(config) as model:
        settings = make_settings(
            tmp_path,
            model_url=model.url,
            apis={"transcription": {"max_concurrent": limit}},
            files={"spool_dir": str(tmp_path)},
        )
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            sim = rig.sim
            bodies = []
            for i in range(8):
                clip = sim.files.add(f"note{i}.m4a", voice(f"message number {i}"), "audio/mp4")
                bodies.append(sim.file_share(f"C{i % 3}", f"U{i}", f"<@{LIVIA}>", [clip]))
            await asyncio.gather(*(rig.send(b) for pair in bodies for b in pair))
            threads = [(m["event"]["channel"], m["event"]["ts"]) for m, _ in bodies]
            replies = await asyncio.gather(*(rig.replies(c, t, timeout=30) for c, t in threads))

            for i, [reply] in enumerate(replies):
                assert f'I heard (note{i}.m4a): "message number {i}"' in reply.text
            assert model.transcription.requests == 8
            assert model.transcription.rate_limited == 0  # never over the upstream's limit
            assert model.transcription.max_in_flight == limit  # and the limit fully used
            stats = rig.manager.get_stats("transcription")
            assert stats["total_requests"] == 8 and stats["successful_requests"] == 8


async def test_over_size_and_unsupported_files_are_refused_before_any_download(
    tmp_path: Path,
) -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.05, record=5)) as model:
        settings = make_settings(tmp_path, model_url=model.url, files={"spool_dir": str(tmp_path)})
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            sim = rig.sim
            big = sim.files.add("holiday.png", png(10, 10), "image/png", size=30 * 1024 * 1024)
            exe = sim.files.add("setup.exe", b"MZ...", "application/x-msdownload")
            ok = sim.files.add("chart.png", png(300, 200), "image/png")
            mention, twin = sim.file_share("C1", "U1", f"<@{LIVIA}> thoughts?", [big, exe, ok])
            for body in (mention, twin):
                await rig.send(body)
            [reply] = await rig.replies("C1", mention["event"]["ts"], timeout=20)

            assert "I couldn't take holiday.png: it is 30 MB, over the 20 MB limit" in reply.text
            assert "I couldn't read setup.exe: EXE files aren't something I can read" in reply.text
            assert "I can see the image you sent (PNG)" in reply.text  # the rest is answered
            downloaded = [c.args["file"] for c in sim.calls_to("files.download")]
            assert downloaded == [ok["id"]]  # the refused ones were never fetched
            assert "thoughts?" in _last_user_content(model)[0]["text"]


async def test_a_rate_limited_download_is_retried_on_the_slack_policy(tmp_path: Path) -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.05)) as model:
        settings = make_settings(
            tmp_path,
            model_url=model.url,
            apis={"slack": {"backoff_min": 0.01, "backoff_max": 0.1}},
            files={"spool_dir": str(tmp_path)},
        )
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            sim = rig.sim
            sim.fail("files.download", retry_after=0.2)
            shot = sim.files.add("shot.png", png(100, 100), "image/png")
            mention, twin = sim.file_share("C1", "U1", f"<@{LIVIA}> see", [shot])
            for body in (mention, twin):
                await rig.send(body)
            [reply] = await rig.replies("C1", mention["event"]["ts"], timeout=20)

            assert "I can see the image you sent (PNG)" in reply.text
            statuses = [c.status for c in sim.calls_to("files.download")]
            assert statuses == [429, 200]
            stats = rig.manager.get_stats("slack")
            assert stats["http_429"] == 1 and stats["retries"] >= 1


async def test_draw_posts_the_generated_image_into_the_thread(tmp_path: Path) -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.05)) as model:
        settings = make_settings(tmp_path, model_url=model.url, files={"spool_dir": str(tmp_path)})
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            ts = await rig.mention("C1", "U1", "draw a red lighthouse at dusk")
            await rig.sim.wait_for(lambda s: bool(s.files.uploads), 20)
            await rig.settle()

            [upload] = rig.sim.files.uploads
            assert upload.data.startswith(b"\x89PNG") and upload.thread_ts == ts
            assert upload.title == "a red lighthouse at dusk"
            assert model.images.requests == 1 and model.stats.requests == 0
            assert rig.manager.get_stats("images")["total_requests"] == 1
            texts = [m.text for m in rig.sim.bot_replies("C1", ts)]
            assert texts[0] == "Here is a red lighthouse at dusk:"
