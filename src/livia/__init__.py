"""Livia: a multi-user AI chatbot whose every upstream call goes through one concurrency manager."""

__version__ = "0.1.0"
