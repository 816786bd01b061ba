"""Turning a message's files into what the model reads, every upstream call governed.

For each file reference in a message (`meta["files"]`, see `livia.files.refs`):

- the bytes are fetched: a Slack share from its `url_private` with the bot token, through
  the manager on the `[slack] api` upstream (the token goes only to Slack's hosts and the
  host of `[slack] api_url`); an HTTP upload from the spool;
- an image becomes a Chat Completions ``image_url`` part (a ``data:`` URL) and its token
  estimate (OpenAI's tile formula) joins the model call's cost;
- audio is transcribed at `[llm] base_url` + ``/audio/transcriptions`` under
  `[apis.transcription]`; the transcript is the user's words, and the reply starts by
  saying what was heard;
- a document's text is extracted locally and trimmed to the token budget, with a note of
  what was cut.

Anything refused (too large, unsupported, too many, unreadable, an upstream that failed)
becomes a sentence at the start of the reply: a file is never dropped silently.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from livia.concurrency.errors import CapacityExhausted
from livia.files.documents import CHARS_PER_TOKEN, Unreadable, extract_text
from livia.files.images import NotAnImage, data_url, image_size, image_tokens
from livia.files.kinds import classify, extension, too_large, unsupported
from livia.files.spool import Spool

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from livia.concurrency import ConcurrencyManager
    from livia.config import Settings

log = logging.getLogger(__name__)

#: Seconds one download or transcription may wait and take in all.
FILE_DEADLINE = 120.0
#: Redirects a Slack download may follow.
MAX_REDIRECTS = 3


class FileFailed(Exception):
    """A file could not be used; the message is the sentence for the reply."""


@dataclass
class Prepared:
    """What a message's files add to the turn."""

    #: ``image_url`` parts for the user's message.
    images: list[dict[str, Any]] = field(default_factory=list)
    #: Text blocks (transcripts, documents' text) the model reads after the user's words.
    context: list[str] = field(default_factory=list)
    #: Sentences the reply starts with: what was heard, what was cut, what was refused.
    notes: list[str] = field(default_factory=list)
    #: Transcripts, in order (a voice note with no text is its transcript).
    transcripts: list[str] = field(default_factory=list)
    #: Estimated tokens of the images.
    image_tokens: int = 0


def slack_token_may_go(url: str, api_url: str) -> bool:
    """True when the bot token may be sent to `url`: Slack's own hosts over HTTPS, or the
    host (and port) of `[slack] api_url` (a local simulator in tests)."""
    target = urlsplit(url)
    api = urlsplit(api_url)
    host = (target.hostname or "").lower()
    if host and host == (api.hostname or "").lower() and target.port == api.port:
        return target.scheme == api.scheme
    return target.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com"))


class FileWork:
    """Fetches, reads, transcribes and draws files for the agent (see module doc)."""

    def __init__(
        self, settings: Settings, manager: ConcurrencyManager, client: AsyncOpenAI
    ) -> None:
        self.settings = settings
        self.limits = settings.files
        self.manager = manager
        self.client = client
        self.spool = Spool(settings.files.spool_dir)
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one message's files ------------------------------------------------------------

    async def prepare(
        self, files: Sequence[Mapping[str, Any]], *, key: str, budget_tokens: int
    ) -> Prepared:
        """Read every file of a message (concurrently); see the module doc."""
        out = Prepared()
        results = await asyncio.gather(
            *(self._one(ref, key=key) for ref in files), return_exceptions=True
        )
        documents: list[tuple[str, str, bytes]] = []
        for ref, result in zip(files, results, strict=True):
            name = str(ref.get("name") or "file")
            if isinstance(result, FileFailed):
                out.notes.append(str(result))
            elif isinstance(result, BaseException):
                log.warning("file %s failed: %s: %s", name, type(result).__name__, result)
                out.notes.append(f"I couldn't read {name}: something went wrong on my side.")
            elif result[0] == "image":
                part, tokens = result[1], result[2]
                out.images.append(part)
                out.image_tokens += tokens
            elif result[0] == "audio":
                transcript = str(result[1]).strip()
                first = transcript.splitlines()[0] if transcript else ""
                out.transcripts.append(transcript)
                if transcript:
                    out.notes.append(f'🎙️ I heard ({name}): "{_clip(first, 200)}"')
                    out.context.append(f"Transcript of the voice message {name}:\n{transcript}")
                else:
                    out.notes.append(f"🎙️ I heard nothing I could make out in {name}.")
            else:
                documents.append((name, str(result[1]), result[2]))
        if documents:
            await self._read_documents(documents, out, budget_tokens)
        return out

    async def _read_documents(
        self, documents: list[tuple[str, str, bytes]], out: Prepared, budget_tokens: int
    ) -> None:
        """Extract each document's text; together they get at most `budget_tokens`."""
        share = max(64, budget_tokens // len(documents)) * CHARS_PER_TOKEN
        for name, ext, data in documents:
            try:
                doc = await asyncio.to_thread(extract_text, data, ext, max_chars=share)
            except Unreadable as exc:
                out.notes.append(f"I couldn't read {name}: {exc}.")
                continue
            header = f"Text of the document {name}"
            if doc.cut:
                shown = f"the first {len(doc.text):,} of {doc.total_chars:,} characters"
                if doc.pages:
                    read = f"pages 1–{doc.pages_read}" if doc.pages_read > 1 else "page 1"
                    shown += f" ({read} of {doc.pages})"
                note = f"📄 {name} is long: I read {shown}; the rest was cut to fit."
                out.notes.append(note)
                header += f" — cut to fit, {shown}"
            out.context.append(f"{header}:\n{doc.text}")

    async def _one(self, ref: Mapping[str, Any], *, key: str) -> tuple[Any, ...]:
        """("image", part, tokens) | ("audio", transcript) | ("document", ext, bytes)."""
        name = str(ref.get("name") or "file")
        if ref.get("refused"):
            raise FileFailed(str(ref["refused"]))
        content_type = str(ref.get("content_type") or "")
        found = classify(name, content_type)
        if found is None:
            raise FileFailed(unsupported(name, content_type))
        kind, sent_type = found
        size = int(ref.get("size") or 0)
        if size > self.limits.max_bytes:
            raise FileFailed(too_large(name, size, self.limits.max_bytes))
        data = await self.fetch(ref, key=key)
        if len(data) > self.limits.max_bytes:
            raise FileFailed(too_large(name, len(data), self.limits.max_bytes))
        if kind == "image":
            try:
                width, height = image_size(data)
            except NotAnImage:
                raise FileFailed(
                    f"I couldn't read {name}: it is not an image I can open."
                ) from None
            part = {"type": "image_url", "image_url": {"url": data_url(data, sent_type)}}
            return ("image", part, image_tokens(width, height))
        if kind == "audio":
            return ("audio", await self.transcribe(name, data, sent_type, key=key))
        return ("document", extension(name, content_type) or "txt", data)

    # -- upstream calls -----------------------------------------------------------------

    async def fetch(self, ref: Mapping[str, Any], *, key: str) -> bytes:
        """The bytes of a file reference: from the spool, or downloaded from Slack."""
        name = str(ref.get("name") or "file")
        if ref.get("source") == "spool":
            try:
                return await asyncio.to_thread(self.spool.read, str(ref.get("path") or ""))
            except OSError:
                raise FileFailed(
                    f"I couldn't read {name}: the upload is no longer here. Please send it again."
                ) from None
        if ref.get("source") == "slack":
            return await self._slack_download(ref, key=key)
        raise FileFailed(f"I couldn't read {name}: I don't know where it came from.")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FILE_DEADLINE, connect=10)
            )
        return self._session

    async def _slack_download(self, ref: Mapping[str, Any], *, key: str) -> bytes:
        name = str(ref.get("name") or "file")
        url = str(ref.get("url") or "")
        slack = self.settings.slack
        token = self.settings.slack_bot_token
        if not url or not slack_token_may_go(url, slack.api_url):
            raise FileFailed(f"I couldn't download {name}: its address is not one of Slack's.")
        limit = self.limits.max_bytes

        async def attempt() -> bytes:
            target = url
            for _ in range(MAX_REDIRECTS + 1):
                headers = {}
                if token and slack_token_may_go(target, slack.api_url):
                    headers["Authorization"] = f"Bearer {token}"
                async with self._http().get(target, headers=headers, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = urljoin(target, resp.headers["Location"])
                        continue
                    resp.raise_for_status()
                    if resp.content_type == "text/html":  # Slack's login page: no access
                        raise FileFailed(
                            f"I couldn't download {name}: Slack did not give me the file "
                            "(does the app have the files:read scope?)."
                        )
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > limit:
                            raise FileFailed(too_large(name, len(body), limit))
                    return bytes(body)
            raise FileFailed(f"I couldn't download {name}: too many redirects.")

        try:
            return await self.manager.run(
                slack.api, attempt, key=key, deadline=FILE_DEADLINE, name="files.download"
            )
        except FileFailed:
            raise
        except CapacityExhausted as exc:
            raise FileFailed(f"I couldn't download {name} from Slack now: {exc}.") from None
        except Exception as exc:
            log.warning("slack download of %s failed: %s", name, _short(exc))
            raise FileFailed(f"I couldn't download {name} from Slack ({_reason(exc)}).") from None

    async def transcribe(self, name: str, data: bytes, content_type: str, *, key: str) -> str:
        """The words in an audio file, from `/audio/transcriptions` under `[apis.transcription]`."""
        model = self.limits.transcription_model

        async def attempt() -> str:
            result = await self.client.audio.transcriptions.create(
                model=model, file=(name, data, content_type)
            )
            return str(getattr(result, "text", result) or "")

        try:
            return await self.manager.run(
                "transcription", attempt, key=key, deadline=FILE_DEADLINE, name="transcriptions"
            )
        except CapacityExhausted as exc:
            raise FileFailed(f"I couldn't transcribe {name} now: {exc}.") from None
        except Exception as exc:
            log.warning("transcription of %s failed: %s", name, _short(exc))
            raise FileFailed(f"I couldn't transcribe {name} ({_reason(exc)}).") from None

    async def draw(self, prompt: str, *, key: str) -> str:
        """Generate an image for `prompt` under `[apis.images]`; its spool name
        (``generated/ID.png``). Raises `FileFailed` with the sentence for the reply."""
        files = self.limits

        async def attempt() -> bytes:
            result = await self.client.images.generate(
                model=files.image_model, prompt=prompt, size=files.image_size, n=1
            )
            item = result.data[0] if result.data else None
            if item is not None and item.b64_json:
                return base64.b64decode(item.b64_json)
            if item is not None and item.url:
                async with self._http().get(item.url) as resp:
                    resp.raise_for_status()
                    return await resp.read()
            raise FileFailed("the image service sent no image")

        try:
            data = await self.manager.run(
                "images", attempt, key=key, deadline=FILE_DEADLINE, name="images.generate"
            )
        except CapacityExhausted as exc:
            raise FileFailed(f"I couldn't draw that now: {exc}.") from None
        except FileFailed as exc:
            raise FileFailed(f"I couldn't draw that: {exc}.") from None
        except Exception as exc:
            log.warning("image generation failed: %s", _short(exc))
            raise FileFailed(f"I couldn't draw that ({_reason(exc)}).") from None
        return await asyncio.to_thread(self.spool.save, data, "png", folder="generated")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _reason(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return f"the service answered {status}; please try again later"
    if isinstance(exc, TimeoutError):
        return "it took too long; please try again"
    return "the service could not be reached; please try again later"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
