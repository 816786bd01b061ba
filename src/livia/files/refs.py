"""File references: what a message keeps about its files (stored as JSON in its `meta`).

A reference is a small dict: ``name``, ``content_type``, ``size``, ``source`` ("slack":
``url`` and ``id``; "spool": ``path`` in the spool), and ``refused`` (the sentence for
the reply) when the file was refused at intake. No file's bytes go into the store.

Limits are applied here, before anything is downloaded: a Slack share over
`[files] max_bytes` is refused from Slack's own ``size`` field, an unsupported type from
its name and type, and the files beyond `[files] max_files` together in one sentence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from livia.config import FilesConfig
from livia.files.kinds import classify, extension, too_large, too_many, unsupported
from livia.files.spool import Spool


def _limit(refs: list[dict[str, Any]], max_files: int) -> list[dict[str, Any]]:
    """The first `max_files` references, then one refusal naming the rest."""
    if len(refs) <= max_files:
        return refs
    extra = [str(ref.get("name") or "file") for ref in refs[max_files:]]
    return [*refs[:max_files], {"name": ", ".join(extra), "refused": too_many(extra, max_files)}]


def slack_refs(files: Iterable[Mapping[str, Any]], limits: FilesConfig) -> list[dict[str, Any]]:
    """References for the `files` of a Slack message event (refusals decided here)."""
    refs: list[dict[str, Any]] = []
    for f in files:
        name = str(f.get("name") or f.get("title") or f.get("id") or "file")
        content_type = str(f.get("mimetype") or "")
        size = int(f.get("size") or 0)
        ref: dict[str, Any] = {
            "name": name,
            "content_type": content_type,
            "size": size,
            "source": "slack",
            "id": str(f.get("id") or ""),
            "url": str(f.get("url_private_download") or f.get("url_private") or ""),
        }
        mode = f.get("mode")
        if mode in ("tombstone", "hidden_by_limit"):
            ref["refused"] = f"I couldn't read {name}: Slack no longer lets me see it."
        elif mode == "external" or f.get("is_external"):
            ref["refused"] = (
                f"I couldn't read {name}: it lives outside Slack. Upload the file itself."
            )
        elif classify(name, content_type) is None:
            ref["refused"] = unsupported(name, content_type)
        elif size > limits.max_bytes:
            ref["refused"] = too_large(name, size, limits.max_bytes)
        elif not ref["url"]:
            ref["refused"] = f"I couldn't read {name}: Slack gave no address to download it."
        refs.append(ref)
    return _limit(refs, limits.max_files)


def http_refs(
    items: Sequence[tuple[str, str, bytes | None, int]], limits: FilesConfig, spool: Spool
) -> list[dict[str, Any]]:
    """References for files sent over HTTP: (name, content_type, bytes, size) each, the
    bytes None when the file was over the limit and not kept. Accepted files are spooled."""
    refs: list[dict[str, Any]] = []
    for name, content_type, data, size in items:
        ref: dict[str, Any] = {"name": name, "content_type": content_type, "size": size}
        if classify(name, content_type) is None:
            ref["refused"] = unsupported(name, content_type)
        elif data is None or size > limits.max_bytes:
            ref["refused"] = too_large(name, size, limits.max_bytes)
        refs.append(ref)
    refs = _limit(refs, limits.max_files)
    kept = iter(items)
    for ref in refs:
        item = next(kept, None)
        if item is None or ref.get("refused") or item[2] is None:
            continue
        ref["source"] = "spool"
        ref["path"] = spool.save(item[2], extension(item[0], item[1]) or "bin")
    return refs
