"""Files waiting for their turn, on disk (`[files] spool_dir`), out of the store.

A message's `meta` (stored as JSON with it) holds only a reference to each file: for a
Slack share its `url_private`, for an HTTP upload the spooled file's name here. Generated
images are kept here too, under ``generated/``, and served at ``/v1/files/NAME``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

#: Seconds a spooled file is kept (then removed when another file is spooled).
KEEP_SECONDS = 7 * 24 * 3600
_NAME = re.compile(r"^[A-Za-z0-9_-]{8,64}\.[a-z0-9]{1,5}$")


class Spool:
    """A directory of files named by random ids."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def save(self, data: bytes, ext: str, *, folder: str = "in") -> str:
        """Write `data`; return its name (``folder/ID.ext``)."""
        where = self.directory / folder
        where.mkdir(parents=True, exist_ok=True)
        self._prune(where)
        name = f"{uuid.uuid4().hex}.{ext or 'bin'}"
        path = where / name
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return f"{folder}/{name}"

    def path(self, name: str) -> Path | None:
        """The file `name` (``folder/ID.ext``) refers to, or None when it is not one of ours."""
        folder, _, base = name.partition("/")
        if folder not in ("in", "generated") or not _NAME.match(base):
            return None
        path = self.directory / folder / base
        return path if path.is_file() else None

    def read(self, name: str) -> bytes:
        path = self.path(name)
        if path is None:
            raise FileNotFoundError(name)
        return path.read_bytes()

    def _prune(self, where: Path) -> None:
        cutoff = time.time() - KEEP_SECONDS
        try:
            entries = list(os.scandir(where))
        except OSError:
            return
        for entry in entries[:1000]:
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                continue
