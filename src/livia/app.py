"""The composition root: one running Livia built from `Settings`, and its FastAPI app.

`run_livia(settings)` starts the parts in dependency order (simulated upstreams in demo
mode, the concurrency manager, the store, the agent, the conversations, Slack) and stops
them in reverse, each stop bounded. `build_app(settings)` wraps that in the app's
lifespan and exposes the running `Livia` as ``app.state.livia`` for every router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from livia import __version__
from livia.agent import Agent
from livia.channels.guard import install_guard
from livia.channels.history import history_router
from livia.channels.http import api_router, install_error_handling
from livia.channels.openai_compat import openai_router
from livia.channels.uploads import files_router
from livia.channels.web import web_router
from livia.concurrency import ConcurrencyManager, build_manager_checked
from livia.config import McpServerConfig, Settings
from livia.conversations import Conversations
from livia.identity import Identity
from livia.monitoring import monitoring_router
from livia.monitoring.loop_lag import LoopLag
from livia.monitoring.snapshot import snapshot as stats_snapshot
from livia.store import Store

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from livia.channels.slack import SlackChannel

log = logging.getLogger(__name__)

#: Seconds each part may take to stop before shutdown moves on.
STOP_TIMEOUT = 15.0
#: Seconds turns in progress get to finish when the server is asked to stop.
DRAIN_GRACE = 5.0
#: Simulated model latency in demo mode: slow enough to see concurrency, quick to chat.
DEMO_MODEL_LATENCY = 1.0
DEMO_TOOL_LATENCY = 0.5
DEMO_NOTICE = (
    "Demo mode: no OPENAI_API_KEY and no [llm] base_url, so Livia answers with a built-in "
    "simulated model and simulated tools. Set OPENAI_API_KEY to talk to OpenAI."
)


@dataclass
class Livia:
    """Everything a running Livia holds; routers read it from ``app.state.livia``."""

    #: The settings in force (in demo mode, pointed at the simulated upstreams).
    settings: Settings
    manager: ConcurrencyManager
    agent: Agent
    store: Store
    conversations: Conversations
    demo: bool = False
    #: A sentence for people (the web page's banner), or None.
    notice: str | None = None
    slack: SlackChannel | None = None
    #: The simulated upstreams of demo mode (they expose their own counters).
    simulators: dict[str, Any] = field(default_factory=dict)
    #: Who a request comes from: the operator's token, users' keys (built on first use).
    identity: Identity | None = None
    #: How late the event loop runs (`/stats` "loop", `/metrics`).
    loop_lag: LoopLag | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def instance_id(self) -> str:
        """This replica's name (``[server] instance_id``, default HOSTNAME-PID)."""
        return self.store.instance_id

    @property
    def ready(self) -> bool:
        """True while messages are accepted and answered."""
        return self.store.is_open and self.conversations.running

    @property
    def upstreams_in_use(self) -> frozenset[str]:
        """The upstreams this deployment calls: the model's, the MCP servers', and Slack's
        when Slack is on (`/stats` shows these, and any other that has seen calls)."""
        settings = self.settings
        used = {settings.llm.api, *(server.api for server in settings.mcp.servers)}
        if settings.slack.mode != "off":
            used.add(settings.slack.api)
        # The file upstreams once configured (before that, once they have seen calls).
        used.update(name for name in ("transcription", "images") if name in settings.apis)
        return frozenset(used)


async def _start_demo_upstreams(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[Settings, dict[str, Any]]:
    """Start the simulated model and tool server; return settings pointed at them."""
    from livia.sim import SimMcp, SimMcpConfig, SimOpenAI, SimOpenAIConfig

    model = SimOpenAI(SimOpenAIConfig(latency=DEMO_MODEL_LATENCY))
    model_url = await model.start(port=0)
    stack.push_async_callback(_bounded, "simulated model", model.stop)
    tools = SimMcp(SimMcpConfig(latency=DEMO_TOOL_LATENCY))
    tools_url = await tools.start(port=0)
    stack.push_async_callback(_bounded, "simulated tools", tools.stop)
    taken = {server.name for server in settings.mcp.servers}
    name = "zapier" if "zapier" not in taken else "demo-zapier"
    demo_server = McpServerConfig(name=name, url=tools_url, api="zapier")
    settings = settings.model_copy(
        update={
            "llm": settings.llm.model_copy(update={"base_url": model_url}),
            "mcp": settings.mcp.model_copy(
                update={"servers": [*settings.mcp.servers, demo_server]}
            ),
        }
    )
    log.warning("DEMO MODE: simulated model at %s, simulated tools at %s", model_url, tools_url)
    log.warning(DEMO_NOTICE)
    return settings, {"openai": model, "mcp": tools}


async def _bounded(name: str, stop: Callable[[], Awaitable[Any]]) -> None:
    """Run one part's stop within `STOP_TIMEOUT`; a failure is logged, shutdown goes on."""
    try:
        await asyncio.wait_for(stop(), STOP_TIMEOUT)
    except Exception:
        log.exception("stopping %s failed", name)


@contextlib.asynccontextmanager
async def run_livia(
    settings: Settings, *, openai_client: AsyncOpenAI | None = None
) -> AsyncIterator[Livia]:
    """Start every part of Livia for `settings`; stop them all (reverse order) on exit."""
    async with contextlib.AsyncExitStack() as stack:
        demo = settings.demo_mode
        simulators: dict[str, Any] = {}
        if demo:
            settings, simulators = await _start_demo_upstreams(settings, stack)
        manager = await build_manager_checked(settings)
        stack.push_async_callback(_bounded, "concurrency manager", manager.aclose)
        store = Store(
            settings.store.url,
            lease=settings.store.lease,
            instance_id=settings.server.resolved_instance_id(),
        )
        await store.open()
        stack.push_async_callback(_bounded, "store", store.close)
        agent = Agent(settings, manager, openai_client=openai_client)
        stack.push_async_callback(_bounded, "agent", agent.aclose)
        await agent.start()
        server = settings.server
        conversations = Conversations(
            agent,
            store,
            max_active=server.max_active_conversations,
            max_queued=server.max_queued,
        )
        stack.push_async_callback(_bounded, "conversations", conversations.aclose)
        livia = Livia(
            settings=settings,
            manager=manager,
            agent=agent,
            store=store,
            conversations=conversations,
            demo=demo,
            notice=DEMO_NOTICE if demo else None,
            simulators=simulators,
            identity=Identity(store, settings.server.api_token.get_secret_value()),
            loop_lag=LoopLag().start(),
        )
        stack.callback(livia.loop_lag.stop if livia.loop_lag else lambda: None)
        if settings.slack.mode != "off":
            from livia.channels.slack import SlackChannel

            # Built before the inbox is taken: it registers Slack's ReplyDelivery.
            livia.slack = SlackChannel(settings, conversations, manager, store=store)
            stack.push_async_callback(_bounded, "slack", livia.slack.aclose)
        if livia.slack is not None:
            await livia.slack.start()
        # Last: a process that fails to start claims no message.
        conversations.snapshot = lambda: stats_snapshot(livia)
        await conversations.start()
        log.info(
            "Livia %s ready: model=%s at %s, tools=%s, slack=%s, store=%s",
            __version__,
            settings.llm.model,
            settings.llm.base_url or "OpenAI",
            ", ".join(agent.tools) or "none",
            settings.slack.mode,
            store.display,
        )
        yield livia
        log.info("Livia stopping")


async def drain(app: FastAPI, grace: float = DRAIN_GRACE) -> None:
    """Begin a graceful stop: refuse new messages (503), let turns in progress finish for
    up to `grace` s, then answer every open request (503: kept, answered on restart).

    A server calls this before it waits for open connections, so none is cut off.
    """
    livia: Livia | None = getattr(app.state, "livia", None)
    if livia is not None:
        log.info("draining: new messages are refused; %.0f s for turns in progress", grace)
        await livia.conversations.aclose(grace=grace)


def build_app(settings: Settings, *, openai_client: AsyncOpenAI | None = None) -> FastAPI:
    """The FastAPI app: chat API, web chat, monitoring, Slack events; Livia runs in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_livia(settings, openai_client=openai_client) as livia:
            if livia.slack is not None and livia.settings.slack.mode == "http":
                app.include_router(livia.slack.router)
            app.state.livia = livia
            try:
                yield
            finally:
                app.state.livia = None

    app = FastAPI(
        title="Livia",
        version=__version__,
        lifespan=lifespan,
        summary="A multi-user AI chatbot: chat API, OpenAI-compatible API, monitoring.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.livia = None
    install_error_handling(app)
    install_guard(
        app,
        bound_host=settings.server.host,
        hosts=settings.server.allowed_hosts,
        origins=settings.server.allowed_origins,
    )
    app.include_router(api_router())
    app.include_router(files_router())
    app.include_router(history_router())
    app.include_router(openai_router())
    app.include_router(web_router())
    app.include_router(monitoring_router())
    return app
