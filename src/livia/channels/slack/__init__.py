"""Livia in Slack: Bolt for Python over Socket Mode or HTTP events, replies streamed in threads."""

from livia.channels.slack.app import (
    SlackChannel,
    SlackDelivery,
    SlackIdentity,
    SlackSetupError,
)
from livia.channels.slack.handling import SlackMessage, Target
from livia.channels.slack.memory import InMemorySlackMemory, SlackMemory, StoreSlackMemory
from livia.channels.slack.mrkdwn import split_text, to_mrkdwn

__all__ = [
    "InMemorySlackMemory",
    "SlackChannel",
    "SlackDelivery",
    "SlackIdentity",
    "SlackMemory",
    "SlackMessage",
    "SlackSetupError",
    "StoreSlackMemory",
    "Target",
    "split_text",
    "to_mrkdwn",
]
