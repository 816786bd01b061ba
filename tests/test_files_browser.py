"""Files on the web page (issue 13), in a real headless chromium: attach (the file picker),
paste and drop images and documents; they show in the chat and reach the model.

Set `LIVIA_SCREENSHOTS=docs/img` to write the README's `web-chat-image.png`.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.files_samples import pdf
from tests.test_browser import DONE, chromium, keep_screenshot, open_page, send

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
__all__ = ["chromium"]  # the module's browser fixture


def chart_png() -> bytes:
    """A small bar chart, like a screenshot someone would paste."""
    image = Image.new("RGB", (640, 400), (250, 250, 252))
    draw = ImageDraw.Draw(image)
    draw.text((24, 16), "Weekly sign-ups", fill=(20, 24, 40))
    for i, (label, value) in enumerate(
        [("Mon", 120), ("Tue", 180), ("Wed", 240), ("Thu", 210), ("Fri", 300)]
    ):
        x = 60 + i * 110
        draw.rectangle([x, 360 - value, x + 70, 360], fill=(79, 91, 213))
        draw.text((x + 22, 368), label, fill=(60, 64, 80))
    draw.line([(40, 360), (620, 360)], fill=(120, 120, 130), width=2)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def attach_with_picker(page: Any, path: Path) -> None:
    """Choose `path` in the page's file input, as the file picker does."""
    document = await page.call("DOM.getDocument")
    node = await page.call(
        "DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file-input"
    )
    await page.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])


async def test_attach_an_image_in_demo_mode(
    chromium: str,
    live_server: Callable[[Any], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real app in demo mode: 📎 picks a chart, it shows in the chat and Livia says what
    she saw (the README screenshot)."""
    from livia.app import build_app
    from livia.config import Settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(
        store={"url": f"sqlite:///{tmp_path}/livia.db"}, files={"spool_dir": str(tmp_path)}
    )
    app = build_app(settings)
    url = live_server(app)
    chart = tmp_path / "signups.png"
    chart.write_bytes(chart_png())

    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await page.wait_for("!document.getElementById('demo-banner').hidden", "the demo banner")
        await page.click("#attach")  # opens the picker (headless: nothing shows)
        await attach_with_picker(page, chart)
        await page.wait_for(
            "document.querySelector('#attachments .chip-file img')", "the attached image's chip"
        )
        await send(page, "What does this chart show?")
        await page.wait_for(f"{DONE} === 1", "the reply", 30)

        shown = await page.js(
            "[...document.querySelectorAll('.msg.user img.attachment')].map((i) => "
            "[i.alt, i.naturalWidth, i.src.slice(0, 22)])"
        )
        assert shown == [["signups.png", 640, "data:image/png;base64,"]]
        reply = await page.js("document.querySelector('.msg.assistant .content').innerText")
        assert reply.startswith("I can see the image you sent (PNG).")
        assert await page.js("document.getElementById('attachments').hidden")
        model = app.state.livia.simulators["openai"]
        assert model.stats.ok == 1
        stats = app.state.livia.manager.get_stats("openai")
        # The image's cost (640x400: 2 tiles = 425 tokens) is in the reservation, not its
        # data URL's length (that would be over 5 000).
        assert stats["total_requests"] == 1
        assert page.errors == []
        keep_screenshot(await page.screenshot(), tmp_path / "web-chat-image.png", readme=True)


async def test_paste_and_drop_reach_the_model(
    chromium: str, livia_server: Callable[..., Any], tmp_path: Path
) -> None:
    srv = await livia_server(latency=0.05, files={"spool_dir": str(tmp_path)})
    png64 = base64.b64encode(chart_png()).decode()
    pdf64 = base64.b64encode(pdf(["The budget for 2027 is 1.2 million"])).decode()
    async with open_page(chromium) as page:
        await page.goto(srv.url + "/")
        await page.wait_for("window.liviaChat", "the page")
        await page.js(
            f"""(() => {{
              const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const paste = new DataTransfer();
              const how = {{bubbles: true, cancelable: true}};
              const png = bytes({json.dumps(png64)});
              paste.items.add(new File([png], 'image.png', {{type: 'image/png'}}));
              document.getElementById('input').dispatchEvent(
                new ClipboardEvent('paste', {{...how, clipboardData: paste}}));
              const drop = new DataTransfer();
              const doc = bytes({json.dumps(pdf64)});
              drop.items.add(new File([doc], 'budget.pdf', {{type: 'application/pdf'}}));
              document.getElementById('thread').dispatchEvent(
                new DragEvent('drop', {{...how, dataTransfer: drop}}));
            }})()"""
        )
        await page.wait_for(
            "document.querySelectorAll('#attachments .chip-file').length === 2", "two chips"
        )
        await page.click("#send")  # no words: the files alone
        await page.wait_for(f"{DONE} === 1", "the reply", 20)

        user = await page.js("document.querySelector('.msg.user').innerText")
        assert "budget.pdf" in user and "(sent" not in user
        assert await page.js("document.querySelectorAll('.msg.user img.attachment').length") == 1
        reply = await page.js("document.querySelector('.msg.assistant .content').innerText")
        assert "I can see the image you sent (PNG). I read budget.pdf." in reply
        [text, image] = srv.model_requests[-1]["messages"][-1]["content"]
        assert image["image_url"]["url"] == f"data:image/png;base64,{png64}"
        assert "The budget for 2027 is 1.2 million" in text["text"]
        assert page.errors == []
