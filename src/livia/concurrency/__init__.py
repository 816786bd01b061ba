"""The concurrency manager: every upstream call goes through here.

```python
manager = ConcurrencyManager({"openai": ApiPolicy(max_concurrent=8, requests_per_minute=500)})
reply = await manager.run("openai", lambda: client.chat.completions.create(...), key="user-42")
```
"""

from livia.concurrency.errors import (
    CapacityExhausted,
    CircuitOpen,
    CoordinationUnavailable,
    UnknownApi,
)
from livia.concurrency.factory import build_backend, build_manager, build_manager_checked
from livia.concurrency.limiter import Backend, Denial, Grant, Limiter, MemoryBackend
from livia.concurrency.manager import ConcurrencyManager
from livia.concurrency.policy import DEFAULT_POLICIES, ApiPolicy, default_policies
from livia.concurrency.redis_backend import RedisBackend, RedisLimiter, RedisUnavailable
from livia.concurrency.retry import RetryableError, classify, parse_duration, retry_after_from

__all__ = [
    "DEFAULT_POLICIES",
    "ApiPolicy",
    "Backend",
    "CapacityExhausted",
    "CircuitOpen",
    "ConcurrencyManager",
    "CoordinationUnavailable",
    "Denial",
    "Grant",
    "Limiter",
    "MemoryBackend",
    "RedisBackend",
    "RedisLimiter",
    "RedisUnavailable",
    "RetryableError",
    "UnknownApi",
    "build_backend",
    "build_manager",
    "build_manager_checked",
    "classify",
    "default_policies",
    "parse_duration",
    "retry_after_from",
]
