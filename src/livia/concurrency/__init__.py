"""The concurrency manager: every upstream call goes through here."""

from livia.concurrency.errors import CapacityExhausted, CircuitOpen, UnknownApi
from livia.concurrency.policy import DEFAULT_POLICIES, ApiPolicy, default_policies

__all__ = [
    "DEFAULT_POLICIES",
    "ApiPolicy",
    "CapacityExhausted",
    "CircuitOpen",
    "UnknownApi",
    "default_policies",
]
