"""Markdown (what models write) to Slack mrkdwn (what `text` fields render).

Slack's `text` field understands its own dialect: `*bold*`, `_italic_`, `~strike~`,
`<url|label>` links, ``` fences and `>` quotes, and it needs `&`, `<` and `>` escaped.
`to_mrkdwn` converts the common Markdown constructs and keeps code as code; `split_text`
cuts a long reply into message-sized parts without breaking a code fence.

The streaming methods (`chat.startStream` / `chat.appendStream` / `chat.stopStream`)
take `markdown_text` and render Markdown themselves, so they get the original text.
"""

from __future__ import annotations

import re

__all__ = ["split_text", "to_mrkdwn"]

_FENCE = re.compile(r"^(\s*)(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_TASK = re.compile(r"^(\s*)[-*+]\s+\[([ xX])\]\s+(.*)$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
#: Slack tokens the model may already write: <@U123>, <#C123>, <!here>, <https://x|y>.
_SLACK_TOKEN = re.compile(r"<(?:[@#!][^<>\s]+|(?:https?|mailto):[^<>\s]+)>")
_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]+(?:\([^()\s]*\))?)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![*\w\\])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_BULLETS = ("•", "◦", "▪")

# Placeholders use characters that cannot appear in model text after the escaping step.
_HOLD = "\x00{}\x00"
_HELD = re.compile("\x00(\\d+)\x00")
_BOLD_OPEN, _BOLD_CLOSE = "\x01", "\x02"


_OWN_IMAGE = re.compile(r"!\[[^\]]*\]\(/v1/files/[^)\s]+\)")


def strip_own_images(markdown: str) -> str:
    """`markdown` without the images Livia drew (they are uploaded into the thread)."""
    if "/v1/files/" not in markdown:
        return markdown
    return _OWN_IMAGE.sub("", markdown).rstrip()


def escape(text: str) -> str:
    """Escape the three characters Slack reserves for its own markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Convert Markdown to Slack mrkdwn; code blocks and inline code are kept verbatim.

    Images Livia drew (``![alt](/v1/files/...)``) are left out: they are uploaded into
    the thread as files."""
    out: list[str] = []
    markdown = strip_own_images(markdown)
    lines = markdown.replace("\r\n", "\n").split("\n")
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(2) == fence and line.strip() == fence:
                out.append("```")
                fence = None
            else:
                out.append(escape(line))
            i += 1
            continue
        if m:
            # The info string (```python) would show as text in Slack: drop it.
            fence = m.group(2)
            out.append("```")
            i += 1
            continue
        if (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and _TABLE_SEPARATOR.match(lines[i + 1])
        ):
            # Slack has no tables; a fixed-width block keeps the columns readable.
            out.append("```")
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                out.append(escape(lines[i].strip()))
                i += 1
            out.append("```")
            continue
        out.append(_convert_line(line))
        i += 1
    if fence is not None:
        out.append("```")  # close an unterminated fence so the rest of the message renders
    return "\n".join(out)


def _convert_line(line: str) -> str:
    if _RULE.match(line):
        return "──────────"
    if m := _HEADING.match(line):
        title = _BOLD.sub(lambda b: b.group(1) or b.group(2), m.group(1))
        return f"*{_inline(title)}*" if title else ""
    if m := _TASK.match(line):
        box = "☑" if m.group(2) in "xX" else "☐"
        return f"{_indent(m.group(1))}{box} {_inline(m.group(3))}"
    if m := _BULLET.match(line):
        level = _level(m.group(1))
        return f"{_indent(m.group(1))}{_BULLETS[level % len(_BULLETS)]} {_inline(m.group(2))}"
    if line.lstrip().startswith(">"):
        stripped = line.lstrip()
        return "> " + _inline(stripped[1:].lstrip())
    return _inline(line)


def _level(spaces: str) -> int:
    return len(spaces.replace("\t", "    ")) // 2


def _indent(spaces: str) -> str:
    return "    " * _level(spaces)


def _inline(text: str) -> str:
    """Convert one line's inline markup, leaving code spans alone."""
    parts: list[str] = []
    pos = 0
    for m in _INLINE_CODE.finditer(text):
        parts.append(_format(text[pos : m.start()]))
        parts.append("`" + escape(m.group(2).strip("`")) + "`")
        pos = m.end()
    parts.append(_format(text[pos:]))
    return "".join(parts)


def _format(text: str) -> str:
    held: list[str] = []

    def hold(value: str) -> str:
        held.append(value)
        return _HOLD.format(len(held) - 1)

    text = _SLACK_TOKEN.sub(lambda m: hold(m.group(0)), text)

    def link(m: re.Match[str]) -> str:
        label = _BOLD.sub(lambda b: b.group(1) or b.group(2), m.group(1)).strip()
        url = m.group(2)
        if not label or label == url:
            return hold(f"<{url}>")
        return hold(f"<{url}|{escape(label).replace('|', '¦')}>")

    text = _LINK.sub(link, text)
    text = escape(text)
    text = _BOLD.sub(lambda m: f"{_BOLD_OPEN}{m.group(1) or m.group(2)}{_BOLD_CLOSE}", text)
    text = _ITALIC.sub(lambda m: f"_{m.group(1)}_", text)
    text = text.replace(_BOLD_OPEN, "*").replace(_BOLD_CLOSE, "*")
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    return _HELD.sub(lambda m: held[int(m.group(1))], text)


def split_text(text: str, limit: int = 3500) -> list[str]:
    """Cut `text` into parts of at most `limit` characters, at line breaks where possible.

    A part that ends inside a ``` block is closed, and the next part reopens it.
    """
    if limit < 16:
        raise ValueError("limit must be at least 16 characters")
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    current: list[str] = []
    size = 0
    in_fence = False

    def flush() -> None:
        nonlocal current, size
        if current:
            body = "\n".join(current)
            parts.append(body + "\n```" if in_fence else body)
        current = ["```"] if in_fence else []
        size = 3 if in_fence else 0

    budget = limit - 4  # room for a closing fence
    for raw in text.split("\n"):
        pieces = [raw[k : k + budget - 4] for k in range(0, len(raw), budget - 4)] or [""]
        for line in pieces:
            if size + len(line) + 1 > budget and current:
                flush()
            current.append(line)
            size += len(line) + 1
            if line.strip().startswith("```"):
                in_fence = not in_fence
    if current and current != ["```"]:
        body = "\n".join(current)
        parts.append(body + "\n```" if in_fence else body)
    return [p for p in parts if p.strip()]
