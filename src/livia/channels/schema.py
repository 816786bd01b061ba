"""Request schemas for routes that read their own body (OpenAPI `requestBody` by hand)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its ``$defs`` inlined, so it stands alone in OpenAPI.

    Pydantic puts nested models under ``$defs`` with ``#/$defs/...`` references, which do
    not resolve once the schema sits inside an OpenAPI document; request models here are
    not recursive, so each reference is replaced by its definition.
    """
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
