"""The simulated Slack workspace's files: shares people post, downloads, and uploads.

`SimSlackFiles` is mounted by `SimSlack`: ``GET /files-pri/{id}/{name}`` serves a shared
file's bytes to a request carrying the bot token (without it, Slack's answer: an HTML
sign-in page), counted as a ``files.download`` call (so `SimSlack.fail("files.download")`
answers it with a 429 + Retry-After, or another error); ``files.getUploadURLExternal``,
``POST /upload/{id}`` and ``files.completeUploadExternal`` take an upload into a thread.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from livia.sim.slack import SimSlack


@dataclass(slots=True)
class SimFile:
    """A file in the workspace: one a person shared, or one the app uploaded."""

    id: str
    name: str
    mimetype: str
    data: bytes
    #: What Slack says the size is (a test may claim more than `data` holds).
    size: int
    title: str = ""
    #: Where the app shared it (uploads): channel and thread.
    channel: str = ""
    thread_ts: str = ""
    completed: bool = False
    downloads: list[str] = field(default_factory=list)  # the token each download carried


class SimSlackFiles:
    """Files of one `SimSlack` (see the module doc)."""

    def __init__(self, slack: SimSlack) -> None:
        self.slack = slack
        self.files: dict[str, SimFile] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/files-pri/{id}/{name}", self._download)
        app.router.add_post("/upload/{id}", self._upload)

    def handlers(self) -> dict[str, Any]:
        return {
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "files.info": self._info,
        }

    def add(
        self, name: str, data: bytes, mimetype: str, *, size: int | None = None
    ) -> dict[str, Any]:
        """Put a file in the workspace; its Slack file object (as events carry it)."""
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = SimFile(
            file_id, name, mimetype, data, len(data) if size is None else size, title=name
        )
        return self.as_object(self.files[file_id])

    def as_object(self, f: SimFile) -> dict[str, Any]:
        url = f"{self.slack._base}/files-pri/{f.id}/{f.name}"
        return {
            "id": f.id,
            "created": int(time.time()),
            "name": f.name,
            "title": f.title or f.name,
            "mimetype": f.mimetype,
            "filetype": f.name.rsplit(".", 1)[-1].lower() if "." in f.name else "binary",
            "size": f.size,
            "mode": "hosted",
            "is_external": False,
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    @property
    def uploads(self) -> list[SimFile]:
        """Files the app uploaded and shared, in order."""
        return [f for f in self.files.values() if f.completed]

    # -- HTTP ---------------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.Response:
        slack = self.slack
        f = self.files.get(request.match_info["id"])
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if slack.latency:
            import asyncio

            await asyncio.sleep(slack.latency)
        status, payload, headers = slack._answer_fault("files.download")
        if status == 0:
            if f is None:
                status, payload = 404, {"ok": False, "error": "file_not_found"}
            elif not token or (slack.bot_token is not None and token != slack.bot_token):
                status, payload = 200, {"ok": False, "error": "not_authed"}
        answered = (status, payload) if status else (200, {"ok": True})
        slack._record("files.download", {"file": request.match_info["id"]}, *answered)
        await slack._notify()
        if status == 200 and payload.get("error") == "not_authed":
            sign_in = "<!DOCTYPE html><html><body>Sign in to Slack</body></html>"
            return web.Response(text=sign_in, content_type="text/html")
        if status:
            return web.json_response(payload, status=status, headers=headers)
        assert f is not None
        f.downloads.append(token)
        return web.Response(body=f.data, content_type=f.mimetype)

    async def _upload(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return web.Response(status=404, text="unknown upload")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            part = next((v for v in form.values() if isinstance(v, web.FileField)), None)
            f.data = part.file.read() if part is not None else b""
        else:
            f.data = await request.read()
        self.slack._record("files.upload", {"file": f.id, "bytes": len(f.data)}, 200, {"ok": True})
        await self.slack._notify()
        return web.Response(text=f"OK - {len(f.data)}")

    # -- Web API methods ----------------------------------------------------------------

    def _get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        from livia.sim.slack import _ApiError, _required

        name = _required(args, "filename")
        try:
            length = int(_required(args, "length"))
        except ValueError:
            raise _ApiError("invalid_arguments") from None
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = SimFile(file_id, name, "application/octet-stream", b"", length)
        return {
            "ok": True,
            "upload_url": f"{self.slack._base}/upload/{file_id}",
            "file_id": file_id,
        }

    def _complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        from livia.sim.slack import _ApiError

        files = args.get("files")
        if isinstance(files, str):
            files = json.loads(files)
        if not isinstance(files, list) or not files:
            raise _ApiError("invalid_arguments")
        done = []
        for item in files:
            f = self.files.get(str(item.get("id") or ""))
            if f is None or not f.data:
                raise _ApiError("file_not_found")
            f.title = str(item.get("title") or f.name)
            f.mimetype = "image/png" if f.name.endswith(".png") else f.mimetype
            f.completed = True
            f.channel = str(args.get("channel_id") or "")
            f.thread_ts = str(args.get("thread_ts") or "")
            done.append({"id": f.id, "title": f.title})
        if args.get("channel_id"):
            msg = self.slack.add_message(
                str(args["channel_id"]),
                "",
                user=self.slack.bot_user_id,
                bot_id=self.slack.bot_id,
                thread_ts=str(args.get("thread_ts") or "") or None,
            )
            msg.text = " ".join(f"<file {d['id']}|{d['title']}>" for d in done)
        return {"ok": True, "files": done}

    def _info(self, args: dict[str, Any]) -> dict[str, Any]:
        from livia.sim.slack import _ApiError, _required

        f = self.files.get(_required(args, "file"))
        if f is None:
            raise _ApiError("file_not_found")
        return {"ok": True, "file": self.as_object(f)}
