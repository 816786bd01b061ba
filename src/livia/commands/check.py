"""`livia check`: validate the configuration, then reach every upstream it names.

One line per check — ✓ it works, ✗ what is wrong and what to do, ! a warning — and
exit status 1 when any check failed. Every check is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import shlex
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
from rich.console import Console
from rich.text import Text

from livia.config import (
    ConfigError,
    McpServerConfig,
    Settings,
    UnsetVariable,
    load_settings,
)
from livia.logs import safe_url, scrub, url_origin

Status = Literal["ok", "fail", "warn", "skip"]
MARKS: dict[Status, tuple[str, str]] = {
    "ok": ("✓", "green"),
    "fail": ("✗", "bold red"),
    "warn": ("!", "yellow"),
    "skip": ("–", "dim"),
}
OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds each upstream may take to answer (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    """Run every check, print one line each; 1 when any failed, else 0."""
    console = Console(highlight=False, soft_wrap=True)
    try:
        settings = load_settings(args.config)
    except UnsetVariable as exc:
        names = " ".join(dict.fromkeys(f"{name}=..." for name, _ in exc.missing))
        fix = f"export {names} before starting Livia (or remove the reference)"
        show(console, Check("config", "fail", str(exc), fix))
        return 1
    except ConfigError as exc:
        fix = (
            "check the --config path (or $LIVIA_CONFIG)"
            if "not found" in str(exc)
            else "fix the key named above, in the file or its LIVIA_* variable"
        )
        show(console, Check("config", "fail", str(exc), fix))
        return 1
    checks = [check_config(settings, args.config or os.environ.get("LIVIA_CONFIG"))]
    show(console, checks[0])
    for result in asyncio.run(check_upstreams(settings, max(0.1, args.timeout))):
        show(console, result)
        checks.append(result)
    failed = sum(c.status == "fail" for c in checks)
    counted = sum(c.status != "skip" for c in checks)
    if failed:
        console.print(Text(f"{failed} of {counted} checks failed", style="bold red"))
        return 1
    console.print(Text(f"all {counted} checks passed", style="green"))
    return 0


def show(console: Console, check: Check) -> None:
    """Print one check as `✓ name: detail` (and the fix on a second line)."""
    mark, style = MARKS[check.status]
    console.print(Text.assemble((mark, style), " ", (check.name, "bold"), f": {check.detail}"))
    if check.fix and check.status in ("fail", "warn"):
        console.print(Text(f"  → {check.fix}", style="dim" if check.status == "warn" else ""))


# --- the checks ----------------------------------------------------------------------------


def check_config(settings: Settings, path: str | None) -> Check:
    """The configuration loaded; say from where and which upstream policies are in force."""
    source = path or "defaults and LIVIA_* variables (no config file)"
    apis = ", ".join(sorted(settings.policies()))
    return Check("config", "ok", f"{source} is valid; upstream policies: {apis}")


async def check_upstreams(settings: Settings, timeout: float) -> list[Check]:
    """All upstream checks, run at once; each bounded by `timeout`."""
    jobs: list[Awaitable[list[Check]]] = [
        _one(check_server(settings)),
        _one(check_model(settings, timeout)),
        *(_one(check_mcp(server, min(timeout, server.timeout))) for server in settings.mcp.servers),
        check_slack(settings, timeout),
        _one(check_redis(settings, timeout)),
        _one(check_store(settings, timeout)),
    ]
    results = await asyncio.gather(*jobs)
    return [check for group in results for check in group]


async def _one(check: Awaitable[Check | None]) -> list[Check]:
    result = await check
    return [] if result is None else [result]


async def check_server(settings: Settings) -> Check | None:
    """A warning when the server listens beyond this machine without a token."""
    server = settings.server
    if server.api_token.get_secret_value() or _is_loopback(server.host):
        return None
    return Check(
        "server",
        "warn",
        f"listening on {server.host}:{server.port} with no api_token: anyone who can reach it "
        "can chat and read /stats",
        "set LIVIA_SERVER__API_TOKEN (clients send it as `Authorization: Bearer …`)",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_model(settings: Settings, timeout: float) -> Check:
    """The model endpoint answers `GET /models` with our key and knows the configured model."""
    if settings.demo_mode:
        return Check(
            "model",
            "ok",
            "demo mode (no OPENAI_API_KEY and no [llm] base_url): Livia answers with its "
            "built-in simulated model",
        )
    base = (settings.llm.base_url or OPENAI_URL).rstrip("/")
    key = settings.openai_api_key
    if not settings.llm.base_url and not key:  # pragma: no cover - demo_mode covers this
        return Check("model", "fail", "no OPENAI_API_KEY", "export OPENAI_API_KEY=sk-…")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    where = safe_url(base)
    try:
        async with httpx2.AsyncClient(timeout=timeout, headers=headers) as client:
            response = await client.get(f"{base}/models")
    except httpx2.ConnectError as exc:
        return Check(
            "model",
            "fail",
            f"cannot reach {where}: {exc or 'connection refused'}",
            "check [llm] base_url and that the endpoint is up",
        )
    except httpx2.TimeoutException:
        return Check("model", "fail", f"{where} did not answer within {timeout:g} s", "")
    except httpx2.HTTPError as exc:
        return Check("model", "fail", f"{where}: {type(exc).__name__}: {exc}", "")
    if response.status_code in (401, 403):
        return Check(
            "model",
            "fail",
            f"{where} refused the key (HTTP {response.status_code})",
            "check OPENAI_API_KEY (a key for this endpoint, not expired or revoked)",
        )
    if response.status_code == 404:
        return Check(
            "model",
            "fail",
            f"{where}/models does not exist (HTTP 404)",
            "check [llm] base_url: OpenAI-compatible endpoints usually end in /v1",
        )
    if response.status_code >= 400:
        return Check("model", "fail", f"{where} answered HTTP {response.status_code}", "")
    try:
        ids = [str(m.get("id")) for m in response.json().get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        ids = []
    model = settings.llm.model
    if model in ids:
        return Check("model", "ok", f"{where} answers; model {model} is available")
    return Check(
        "model",
        "warn",
        f"{where} answers, but {model} is not among its {len(ids)} models",
        "check [llm] model (some compatible servers do not list every model)",
    )


async def check_mcp(server: McpServerConfig, timeout: float) -> Check:
    """Connect to one MCP server and list its tools."""
    from mcp.client.client import Client

    name = f"mcp {server.name}"
    where = (
        f"`{shlex.join([server.command, *server.args])}`"
        if server.command
        else url_origin(server.resolved_url())  # Zapier puts the key in the path: host only
    )
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout),
            _mcp_transport(server, timeout) as transport,
            Client(transport, read_timeout_seconds=timeout, cache=None) as client,
        ):
            tools = await client.list_tools()
    except TimeoutError:
        return Check(
            name,
            "fail",
            f"{where} did not finish the handshake within {timeout:g} s",
            "check that the server runs and the URL (or command) is right",
        )
    except Exception as exc:  # connection, protocol and process errors alike
        root = _root_cause(exc)
        fix = (
            "check the command and its args (is it installed?)"
            if server.command
            else "check the url, the headers (tokens) and that the server is up"
        )
        return Check(name, "fail", f"{where}: {scrub(f'{type(root).__name__}: {root}')}", fix)
    names = [t.name for t in tools.tools]
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    return Check(
        name,
        "ok" if names else "warn",
        f"{where} answers in {time.monotonic() - started:.1f} s with {len(names)} tools"
        + (f" ({shown})" if names else ""),
        "" if names else "the server offers no tools; is it the right one?",
    )


@contextlib.asynccontextmanager
async def _mcp_transport(server: McpServerConfig, timeout: float) -> AsyncIterator[Any]:
    """The transport for one server: stdio (its stderr discarded) or streamable HTTP."""
    if server.command:
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=server.resolved_command(),
            args=list(server.args),
            env=server.resolved_env() or None,
        )
        with open(os.devnull, "w") as devnull:  # noqa: ASYNC230 - opening /dev/null never blocks
            yield stdio_client(params, errlog=devnull)
        return
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(
        headers=server.resolved_headers() or None, timeout=httpx2.Timeout(timeout)
    )
    async with http:
        yield streamable_http_client(server.resolved_url(), http_client=http)


def _root_cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio wraps transport errors in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def check_slack(settings: Settings, timeout: float) -> list[Check]:
    """Slack's tokens: the bot token via `auth.test`, the app token or signing secret by mode."""
    slack = settings.slack
    if slack.mode == "off":
        return [Check("slack", "skip", 'off ([slack] mode = "off")')]
    out: list[Check] = []
    token = settings.slack_bot_token
    if not token:
        out.append(
            Check(
                "slack",
                "fail",
                "SLACK_BOT_TOKEN is not set",
                'export SLACK_BOT_TOKEN=xoxb-… or set [slack] mode = "off"',
            )
        )
    else:
        out.append(await _slack_call(slack.api_url, "auth.test", token, timeout, "SLACK_BOT_TOKEN"))
    if slack.mode == "socket":
        app_token = settings.slack_app_token
        if not app_token.startswith("xapp-"):
            out.append(
                Check(
                    "slack socket mode",
                    "fail",
                    "SLACK_APP_TOKEN is not set"
                    if not app_token
                    else "SLACK_APP_TOKEN does not look like an app-level token (xapp-…)",
                    "create an app-level token with connections:write and export it",
                )
            )
        else:
            out.append(
                await _slack_call(
                    slack.api_url, "apps.connections.open", app_token, timeout, "SLACK_APP_TOKEN"
                )
            )
    elif slack.mode == "http" and not settings.slack_signing_secret:
        out.append(
            Check(
                "slack http mode",
                "fail",
                "SLACK_SIGNING_SECRET is not set",
                "export SLACK_SIGNING_SECRET (Basic Information → App Credentials)",
            )
        )
    return out


async def _slack_call(api_url: str, method: str, token: str, timeout: float, env: str) -> Check:
    name = "slack" if method == "auth.test" else "slack socket mode"
    url = api_url.rstrip("/") + "/" + method
    try:
        async with httpx2.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, headers={"Authorization": f"Bearer {token}"})
        body = response.json()
    except httpx2.HTTPError as exc:
        return Check(
            name,
            "fail",
            f"cannot reach {safe_url(url)}: {exc or type(exc).__name__}",
            "check the network (or [slack] api_url)",
        )
    except ValueError:
        return Check(
            name,
            "fail",
            f"{safe_url(url)} did not answer JSON (HTTP {response.status_code})",
            "check [slack] api_url",
        )
    if not body.get("ok"):
        error = body.get("error", "unknown_error")
        fix = (
            f"{env} was refused: copy it again from the Slack app's settings"
            if error in ("invalid_auth", "not_authed", "token_revoked", "account_inactive")
            else "see https://api.slack.com/methods/" + method
        )
        return Check(name, "fail", f"{method} failed: {error}", fix)
    if method == "auth.test":
        who = body.get("user") or body.get("bot_id") or "the bot"
        team = body.get("team") or body.get("team_id") or "its workspace"
        return Check(name, "ok", f"{env} works: {who} in {team}")
    return Check(name, "ok", f"{env} works: Socket Mode connections can be opened")


async def check_redis(settings: Settings, timeout: float) -> Check | None:
    """`PING` the Redis server when limits are shared through it."""
    coordination = settings.coordination
    if coordination.backend != "redis":
        return None
    import redis.asyncio as redis

    where = safe_url(coordination.redis_url)
    client: Any = None
    try:
        client = redis.from_url(
            coordination.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        async with asyncio.timeout(timeout):
            await client.ping()
    except (TimeoutError, OSError, redis.RedisError, ValueError) as exc:
        return Check(
            "redis",
            "fail",
            f"cannot PING {where}: {exc or type(exc).__name__}",
            'start Redis, fix [coordination] redis_url, or set [coordination] backend = "memory"',
        )
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
    return Check("redis", "ok", f"PING {where} answered; limits are shared through it")


async def check_store(settings: Settings, timeout: float) -> Check:
    """Reach the store (SQLite file or PostgreSQL) and say its schema version."""
    from livia.store import Store, StoreError

    try:
        async with asyncio.timeout(timeout):
            info = await Store.inspect(settings.store.url)
    except (StoreError, TimeoutError) as exc:
        return Check(
            "store",
            "fail",
            str(exc) or f"no answer from the store within {timeout:.0f} s",
            "start the database or fix [store] url (LIVIA_STORE__URL)",
        )
    if info.current is None:
        what = "empty; its schema is created at start-up"
    elif info.up_to_date:
        what = f"schema {info.current}"
    else:
        what = f"schema {info.current}, upgraded to {info.head} at start-up (or livia db upgrade)"
    replicas = f"; {info.live_processes} live Livia process(es)" if info.live_processes else ""
    return Check("store", "ok", f"{info.display}: {what}{replicas}")
