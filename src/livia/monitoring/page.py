"""Self-contained pages: an HTML file with its CSS and JS inlined into one document.

The sources stay separate files (readable, diffable); the browser gets one response
with no further requests and nothing from the internet.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

_STYLESHEET = re.compile(r'<link rel="stylesheet" href="([\w.-]+)">')
_SCRIPT = re.compile(r'<script src="([\w.-]+)"></script>')
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_INLINE_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def inline_assets(folder: Path, page: str) -> str:
    """`folder/page` (HTML) with the local stylesheets and scripts it names inlined."""

    def read(name: str) -> str:
        return (folder / name).read_text(encoding="utf-8")

    html = _STYLESHEET.sub(lambda m: f"<style>\n{read(m.group(1))}</style>", read(page))
    # "</script" inside a script would end it early.
    return _SCRIPT.sub(
        lambda m: "<script>\n" + read(m.group(1)).replace("</script", "<\\/script") + "</script>",
        html,
    )


def page_csp(html: str) -> str:
    """The Content-Security-Policy for a page built by `inline_assets`: its inline
    ``<script>`` and ``<style>`` blocks are allowed by their SHA-256 hashes, nothing else
    runs, it talks only to its own origin and is never framed."""

    def hashes(pattern: re.Pattern[str]) -> str:
        found = []
        for block in pattern.findall(html):
            digest = hashlib.sha256(block.encode("utf-8")).digest()
            found.append(f"'sha256-{base64.b64encode(digest).decode()}'")
        return " ".join(found) or "'none'"

    return (
        f"default-src 'self'; script-src {hashes(_INLINE_SCRIPT)}; "
        f"style-src {hashes(_INLINE_STYLE)}; img-src 'self' data: blob:; connect-src 'self'; "
        "base-uri 'none'; object-src 'none'; form-action 'self'; frame-ancestors 'none'"
    )
