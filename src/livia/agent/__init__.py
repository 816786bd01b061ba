"""The agent: an OpenAI-compatible model and MCP tools, every call governed by the manager.

The names below load on first use (PEP 562): the events are needed everywhere, the SDKs
behind the model and the tools (openai, mcp: over a second to import) only when serving,
so `livia keys`, `livia db` and friends start at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from livia.agent.events import TextDelta, ToolFinished, ToolStarted, TurnDone, TurnEvent

if TYPE_CHECKING:
    from livia.agent.failures import ModelFailure, StreamInterrupted, model_failure
    from livia.agent.model import ModelClient, ModelReply, ToolCall, make_openai_client
    from livia.agent.prompts import PERSONA, build_messages, system_prompt, trim_history
    from livia.agent.toolbox import Toolbox, ToolOutcome, ToolSpec
    from livia.agent.turn import Agent

#: Public name -> the module that defines it.
_LAZY = {
    "ModelFailure": "failures",
    "StreamInterrupted": "failures",
    "model_failure": "failures",
    "ModelClient": "model",
    "ModelReply": "model",
    "ToolCall": "model",
    "make_openai_client": "model",
    "PERSONA": "prompts",
    "build_messages": "prompts",
    "system_prompt": "prompts",
    "trim_history": "prompts",
    "Toolbox": "toolbox",
    "ToolOutcome": "toolbox",
    "ToolSpec": "toolbox",
    "Agent": "turn",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livia.agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"livia.agent.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "PERSONA",
    "Agent",
    "ModelClient",
    "ModelFailure",
    "ModelReply",
    "StreamInterrupted",
    "TextDelta",
    "ToolCall",
    "ToolFinished",
    "ToolOutcome",
    "ToolSpec",
    "ToolStarted",
    "Toolbox",
    "TurnDone",
    "TurnEvent",
    "build_messages",
    "make_openai_client",
    "model_failure",
    "system_prompt",
    "trim_history",
]
