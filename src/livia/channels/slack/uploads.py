"""Posting a file into a Slack thread: Slack's external upload flow, through the manager.

``files.getUploadURLExternal`` (name and length) gives an upload URL and a file id; the
bytes are POSTed there; ``files.completeUploadExternal`` shares the file in the thread.
Each of the three calls goes through the manager on the `[slack] api` upstream.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from livia.channels.slack.api import SlackApi

#: An image Livia drew, as her reply shows it: ``![alt](/v1/files/generated/ID.png)``.
DRAWN = re.compile(r"!\[([^\]]*)\]\(/v1/files/(generated/[A-Za-z0-9_-]+\.png)\)")


async def upload_file(
    api: SlackApi,
    data: bytes,
    *,
    filename: str,
    title: str,
    channel: str,
    thread_ts: str,
    key: str,
    deadline: float = 60.0,
) -> str:
    """Share `data` as `filename` in the thread; the Slack file id."""
    got = await api.call(
        "files.getUploadURLExternal",
        key=key,
        deadline=deadline,
        filename=filename,
        length=len(data),
    )
    upload_url = str(got["upload_url"])
    file_id = str(got["file_id"])

    async def send() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=deadline)) as http:
            form = aiohttp.FormData()
            form.add_field("file", data, filename=filename, content_type="image/png")
            async with http.post(upload_url, data=form) as resp:
                resp.raise_for_status()

    await api.run(send, key=key, deadline=deadline, name="files.upload")
    files: list[dict[str, Any]] = [{"id": file_id, "title": title}]
    await api.call(
        "files.completeUploadExternal",
        key=key,
        deadline=deadline,
        files=files,
        channel_id=channel,
        thread_ts=thread_ts,
    )
    return file_id
