"""Text out of documents (PDF, DOCX, TXT/MD/CSV), read locally, trimmed to a budget.

`pypdf` (pure Python, maintained by the py-pdf organisation) reads PDFs and
`python-docx` reads Word files; neither runs anything from the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

#: Characters a token stands for, as `livia.agent.prompts` estimates them.
CHARS_PER_TOKEN = 4
#: Pages of a PDF read at most (the rest count as cut).
MAX_PAGES = 500


class Unreadable(ValueError):
    """The document could not be read; the message says why, for people."""


@dataclass(frozen=True, slots=True)
class Extracted:
    """A document's text, maybe cut to fit."""

    text: str
    #: Characters in the whole document.
    total_chars: int
    #: Pages (PDF) read into `text` and in all; 0 when the format has no pages.
    pages_read: int = 0
    pages: int = 0

    @property
    def cut(self) -> bool:
        return len(self.text) < self.total_chars


def extract_text(data: bytes, ext: str, *, max_chars: int) -> Extracted:
    """The text of a document of type `ext`, at most `max_chars` of it (the start)."""
    if ext == "pdf":
        return _pdf(data, max_chars)
    if ext == "docx":
        return _docx(data, max_chars)
    text = _decode(data)
    return Extracted(text[:max_chars], len(text))


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-16"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        return text
    return data.decode("latin-1")


def _pdf(data: bytes, max_chars: int) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:
                raise Unreadable("it is protected by a password") from None
        pages = len(reader.pages)
        texts = [(page.extract_text() or "").strip() for page in reader.pages[:MAX_PAGES]]
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise Unreadable(f"it is not a PDF I can read ({type(exc).__name__})") from None
    whole = "\n\n".join(texts)
    if not whole.strip():
        raise Unreadable("it has no text I can read (a scan? send the pages as images)")
    read, used = 0, 0
    for text in texts:
        if used >= max_chars:
            break
        read += 1
        used += len(text) + 2
    return Extracted(whole[:max_chars], len(whole), read, pages)


def _docx(data: bytes, max_chars: int) -> Extracted:
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # a zip that is no Word file, a broken part...
        raise Unreadable(f"it is not a Word document I can read ({type(exc).__name__})") from None
    lines = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text for cell in row.cells))
    text = "\n".join(line for line in lines if line.strip())
    return Extracted(text[:max_chars], len(text))
