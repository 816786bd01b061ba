"""Build the concurrency manager a configuration asks for (memory or Redis backend)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from livia.concurrency.limiter import Backend, MemoryBackend
from livia.concurrency.manager import ConcurrencyManager
from livia.concurrency.redis_backend import RedisBackend

if TYPE_CHECKING:  # livia.config imports livia.concurrency: no runtime import back
    from livia.config import CoordinationConfig, Settings

log = logging.getLogger("livia.concurrency")


def build_backend(coordination: CoordinationConfig) -> Backend:
    """The backend `[coordination]` names: limits in this process, or shared through Redis."""
    if coordination.backend == "redis":
        return RedisBackend(
            coordination.redis_url,
            prefix=coordination.prefix,
            lease_ttl=coordination.lease_ttl,
            timeout=coordination.timeout,
            on_outage=coordination.on_outage,
        )
    if coordination.backend != "memory":
        raise ValueError(
            f'[coordination] backend must be "memory" or "redis", not {coordination.backend!r}'
        )
    return MemoryBackend()


def build_manager(settings: Settings) -> ConcurrencyManager:
    """The manager for `settings`: its `[apis.*]` policies on the `[coordination]` backend.

    Makes no connection: with Redis, the first call connects (and raises
    `RedisUnavailable` if it cannot). Use `build_manager_checked` to fail at start-up.
    """
    backend = build_backend(settings.coordination)
    log.debug("concurrency backend: %s", backend.name)
    return ConcurrencyManager(settings.policies(), backend=backend)


async def build_manager_checked(settings: Settings) -> ConcurrencyManager:
    """`build_manager`, then check the backend answers: raises `RedisUnavailable` at once
    (within the connect timeout) when Redis cannot be reached."""
    manager = build_manager(settings)
    backend = manager.backend
    if isinstance(backend, RedisBackend):
        try:
            await backend.connect()
        except BaseException:
            await manager.aclose()
            raise
    return manager
