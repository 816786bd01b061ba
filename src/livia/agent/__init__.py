"""The agent: an OpenAI-compatible model and MCP tools, every call governed by the manager."""

from livia.agent.events import TextDelta, ToolFinished, ToolStarted, TurnDone, TurnEvent
from livia.agent.failures import ModelFailure, StreamInterrupted, model_failure
from livia.agent.model import ModelClient, ModelReply, ToolCall, make_openai_client
from livia.agent.prompts import PERSONA, build_messages, system_prompt, trim_history
from livia.agent.toolbox import Toolbox, ToolOutcome, ToolSpec
from livia.agent.turn import Agent

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
