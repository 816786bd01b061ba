"""Channels: where messages come from and replies go (HTTP and the web page, Slack)."""
