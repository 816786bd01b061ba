"""The simulated model's media endpoints: audio transcriptions and image generations, and
what the chat endpoint says about images and documents it is given.

- ``POST /v1/audio/transcriptions`` (multipart ``file`` + ``model``) answers
  ``{"text": ...}``: the text after ``livia-transcript:`` in the file's bytes (a test or
  a demo puts it in the file's metadata) up to a newline or NUL, else `FIXED_TRANSCRIPT`.
- ``POST /v1/images/generations`` (JSON ``model``, ``prompt``) answers a small PNG in
  ``b64_json``.
- A chat request whose last user message holds ``image_url`` parts (or documents' text)
  gets a reply that starts by saying what it was shown.

Each endpoint has limits of its own (`SimEndpointLimits`: concurrency and requests per
minute, 429 with ``retry-after`` over them) and shares the model's latency and fault
rates, so the client's governance of these upstreams is tested like chat's. Each counts
its requests and the most it had in flight at once (`SimEndpoint.max_in_flight`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from livia.sim import openai_wire as wire
from livia.sim.limits import SlidingWindow
from livia.sim.replies import Reply

#: What a transcription says when the audio carries no ``livia-transcript:`` text.
FIXED_TRANSCRIPT = "Hello Livia, this is a voice message from the simulator."
_MARKER = re.compile(rb"livia-transcript:([^\n\r\x00]{1,2000})")


@dataclass(frozen=True)
class SimEndpointLimits:
    """Limits of one media endpoint (0: off)."""

    max_concurrent: int = 0
    requests_per_minute: int = 0


@dataclass
class SimEndpoint:
    """One media endpoint's limits and counters."""

    name: str
    limits: SimEndpointLimits
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    failed: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    window: SlidingWindow | None = None
    #: What the endpoint was sent (file names and sizes, prompts), oldest first.
    seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.limits.requests_per_minute:
            self.window = SlidingWindow(self.limits.requests_per_minute, 60.0)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": self.rate_limited,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    def reset(self) -> None:
        self.requests = self.ok = self.rate_limited = self.failed = 0
        self.max_in_flight = self.in_flight
        self.seen.clear()
        if self.window is not None:
            self.window.clear()

    async def serve(
        self,
        request: web.Request,
        rng: random.Random,
        latency: Callable[[], float],
        faults: tuple[float, float, float],
        work: Callable[[], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Admit (or 429), then a fault or `work()` after the latency."""
        now = time.monotonic()
        self.requests += 1
        limits = self.limits
        wait = 0.0
        if limits.max_concurrent and self.in_flight >= limits.max_concurrent:
            wait = 1.0
        if self.window is not None and not self.window.admits(now):
            wait = max(wait, self.window.wait(now))
        if wait:
            self.rate_limited += 1
            return web.json_response(
                wire.error_body(
                    f"Rate limit reached for {self.name}: please try again in {wait:.1f}s.",
                    "requests",
                    code="rate_limit_exceeded",
                ),
                status=429,
                headers={
                    "retry-after": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                },
                dumps=wire.dumps,
            )
        if self.window is not None:
            self.window.add(now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            draw = rng.random()
            drop, hang, fail = faults
            await asyncio.sleep(latency())
            if draw < drop + hang:
                self.failed += 1
                if request.transport is not None:
                    request.transport.close()  # the client sees a broken connection
                return web.Response(status=499)
            if draw < drop + hang + fail:
                self.failed += 1
                return web.json_response(
                    wire.error_body("The server had an error.", "server_error"),
                    status=500,
                    dumps=wire.dumps,
                )
            response = await work()
            self.ok += 1
            return response
        finally:
            self.in_flight -= 1


def transcript_of(data: bytes) -> str:
    """What the simulator hears in `data` (see the module doc)."""
    found = _MARKER.search(data)
    return found.group(1).decode("utf-8", "replace").strip() if found else FIXED_TRANSCRIPT


def png(prompt: str, size: int = 256) -> bytes:
    """A small PNG for `prompt`: a gradient and a disc in colours drawn from its hash."""
    from PIL import Image, ImageDraw

    digest = hashlib.sha256(prompt.encode()).digest()
    top, bottom, disc = digest[0:3], digest[3:6], digest[6:9]
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        t = y / (size - 1)
        colour = tuple(round(a * (1 - t) + b * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (size, y)], fill=colour)
    r = size // 4
    draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], fill=tuple(disc))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def transcriptions(endpoint: SimEndpoint, request: web.Request) -> web.Response:
    """The body of a transcription request, answered (called once admitted)."""
    form = await request.post()
    upload = form.get("file")
    model = form.get("model")
    if not isinstance(model, str) or not model:
        return _bad("you must provide a model parameter", "model")
    if not isinstance(upload, web.FileField):
        return _bad("you must provide a file", "file")
    data = upload.file.read()
    text = transcript_of(data)
    endpoint.seen.append({"name": upload.filename, "bytes": len(data), "model": model})
    if form.get("response_format") == "text":
        return web.Response(text=text)
    return web.json_response({"text": text})


async def generations(endpoint: SimEndpoint, request: web.Request) -> web.Response:
    """The body of an image generation request, answered (called once admitted)."""
    try:
        body = await request.json()
    except ValueError:
        return _bad("We could not parse the JSON body of your request.")
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        return _bad("you must provide a prompt", "prompt")
    endpoint.seen.append({"prompt": prompt, "model": body.get("model")})
    image = await asyncio.to_thread(png, prompt)
    item: dict[str, Any] = {"revised_prompt": prompt}
    if body.get("response_format") == "url":
        item["url"] = "data:image/png;base64," + base64.b64encode(image).decode()
    else:
        item["b64_json"] = base64.b64encode(image).decode()
    return web.json_response({"created": int(time.time()), "data": [item]})


def _bad(message: str, param: str | None = None) -> web.Response:
    return web.json_response(
        wire.error_body(message, "invalid_request_error", param=param),
        status=400,
        dumps=wire.dumps,
    )


_DOCUMENT = re.compile(r"^Text of the document (.+?)(?: — cut to fit.*)?:$", re.MULTILINE)


def acknowledge(messages: Sequence[Mapping[str, Any]], reply: Reply) -> Reply:
    """`reply`, its text starting with what the last user message showed the model."""
    if reply.text is None:
        return reply
    content = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    said: list[str] = []
    if isinstance(content, list):
        images = [p for p in content if isinstance(p, Mapping) and p.get("type") == "image_url"]
        if images:
            kinds = sorted({_image_kind(p) for p in images})
            n = len(images)
            said.append(
                f"I can see {'the image' if n == 1 else f'{n} images'} you sent "
                f"({', '.join(kinds)})."
            )
        text = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    else:
        text = str(content or "")
    for name in _DOCUMENT.findall(text):
        said.append(f"I read {name}.")
    if not said:
        return reply
    return replace(reply, text=" ".join(said) + " " + reply.text)


def _image_kind(part: Mapping[str, Any]) -> str:
    url = str((part.get("image_url") or {}).get("url") or "")
    if url.startswith("data:image/"):
        return url[len("data:image/") :].split(";", 1)[0].upper()
    return "a linked image"
