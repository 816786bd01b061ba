"""Self-contained pages: an HTML file with its CSS and JS inlined into one document.

The sources stay separate files (readable, diffable); the browser gets one response
with no further requests and nothing from the internet.
"""

from __future__ import annotations

import re
from pathlib import Path

_STYLESHEET = re.compile(r'<link rel="stylesheet" href="([\w.-]+)">')
_SCRIPT = re.compile(r'<script src="([\w.-]+)"></script>')


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
