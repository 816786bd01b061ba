"""What Livia accepts in a message: images, audio, documents; and the sentences for the rest.

A file is classified by its name's extension first, then by its content type, so a voice
clip sent as ``audio/webm`` and a ``notes.md`` sent as ``application/octet-stream`` are
both recognised. Anything else is refused with a sentence that names what is accepted.
"""

from __future__ import annotations

import mimetypes
from typing import Literal

Kind = Literal["image", "audio", "document"]

#: Extension -> (kind, the content type it is sent on as).
EXTENSIONS: dict[str, tuple[Kind, str]] = {
    "png": ("image", "image/png"),
    "jpg": ("image", "image/jpeg"),
    "jpeg": ("image", "image/jpeg"),
    "webp": ("image", "image/webp"),
    "gif": ("image", "image/gif"),
    "mp3": ("audio", "audio/mpeg"),
    "mpga": ("audio", "audio/mpeg"),
    "mpeg": ("audio", "audio/mpeg"),
    "mp4": ("audio", "audio/mp4"),
    "m4a": ("audio", "audio/mp4"),
    "wav": ("audio", "audio/wav"),
    "ogg": ("audio", "audio/ogg"),
    "oga": ("audio", "audio/ogg"),
    "flac": ("audio", "audio/flac"),
    "webm": ("audio", "audio/webm"),
    "pdf": ("document", "application/pdf"),
    "docx": (
        "document",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    "txt": ("document", "text/plain"),
    "md": ("document", "text/markdown"),
    "csv": ("document", "text/csv"),
}

_BY_TYPE: dict[str, str] = {}
for _ext, (_kind, _type) in EXTENSIONS.items():
    _BY_TYPE.setdefault(_type, _ext)
_BY_TYPE.update(
    {
        "image/jpg": "jpg",
        "audio/x-wav": "wav",
        "audio/wave": "wav",
        "audio/x-m4a": "m4a",
        "audio/m4a": "m4a",
        "audio/mp3": "mp3",
        "audio/x-flac": "flac",
        "video/mp4": "mp4",
        "video/webm": "webm",
        "text/x-markdown": "md",
        "application/csv": "csv",
    }
)

ACCEPTED = (
    "images (PNG, JPEG, WEBP, GIF), audio (MP3, MP4/M4A, WAV, OGG, FLAC, WEBM) "
    "and documents (PDF, DOCX, TXT, MD, CSV)"
)


def extension(name: str, content_type: str = "") -> str | None:
    """The accepted extension `name` or `content_type` stands for, or None."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in EXTENSIONS:
        return ext
    base = content_type.split(";", 1)[0].strip().lower()
    return _BY_TYPE.get(base)


def classify(name: str, content_type: str = "") -> tuple[Kind, str] | None:
    """(kind, content type) for an accepted file, else None."""
    ext = extension(name, content_type)
    return EXTENSIONS[ext] if ext is not None else None


def human_size(size: int) -> str:
    """`size` bytes for people: "812 bytes", "3.4 MB", "20 MB"."""
    if size < 1024:
        return f"{size} bytes"
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            value = size / scale
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value == int(value)
                else (f"{value:.1f} {unit}")
            )
    return f"{size} bytes"  # pragma: no cover


def describe_type(name: str, content_type: str = "") -> str:
    """How a refused file's type is named: its extension, else its content type."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext:
        return ext.upper()
    guessed = content_type or mimetypes.guess_type(name)[0] or ""
    return guessed or "this kind of"


def too_large(name: str, size: int, limit: int) -> str:
    """The sentence for a file over `[files] max_bytes`."""
    return (
        f"I couldn't take {name}: it is {human_size(size)}, over the {human_size(limit)} "
        "limit for one file. Send a smaller file, or paste the part that matters."
    )


def unsupported(name: str, content_type: str = "") -> str:
    """The sentence for a file of a type Livia does not read."""
    return (
        f"I couldn't read {name}: {describe_type(name, content_type)} files aren't something "
        f"I can read. I take {ACCEPTED}."
    )


def too_many(names: list[str], limit: int) -> str:
    """The sentence for the files beyond `[files] max_files`."""
    left = ", ".join(names)
    return (
        f"I take at most {limit} files per message, so I left out {left}. "
        "Send them in another message."
    )
