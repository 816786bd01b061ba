"""Livia's configuration: a TOML file, overridden by `LIVIA_<SECTION>__<KEY>` variables.

Secrets (API keys, tokens) come only from the environment and are never part of the file.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import socket
import sys
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from livia.concurrency.policy import DEFAULT_POLICIES, ApiPolicy

#: The default policies of the file upstreams (OpenAI's lower tiers: audio and image
#: endpoints have limits of their own, far below chat's).
FILE_POLICIES: dict[str, ApiPolicy] = {
    "transcription": ApiPolicy(
        max_concurrent=4,
        requests_per_minute=50,
        retry_attempts=3,
        backoff_min=1.0,
        backoff_max=30.0,
    ),
    "images": ApiPolicy(
        max_concurrent=2,
        requests_per_minute=5,
        retry_attempts=3,
        backoff_min=2.0,
        backoff_max=60.0,
    ),
}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiConfig(_Section):
    """`[apis.NAME]`: overrides of one upstream's policy; unset keys keep the defaults."""

    max_concurrent: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=0)
    requests_per_hour: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    retry_attempts: int | None = Field(default=None, ge=1)
    backoff_min: float | None = Field(default=None, ge=0)
    backoff_max: float | None = Field(default=None, ge=0)
    backoff_jitter: float | None = Field(default=None, ge=0)
    max_wait: float | None = Field(default=None, ge=0)
    attempt_timeout: float | None = Field(default=None, ge=0)
    window_margin: float | None = Field(default=None, ge=0)
    circuit_failures: int | None = Field(default=None, ge=0)
    circuit_cooloff: float | None = Field(default=None, ge=0)

    def apply(self, base: ApiPolicy) -> ApiPolicy:
        return base.updated(**self.model_dump(exclude_none=True))


class LlmConfig(_Section):
    """`[llm]`: the OpenAI-compatible model."""

    model: str = "gpt-4o-mini"
    #: An OpenAI-compatible endpoint; empty means OpenAI itself (or the simulator in demo mode).
    base_url: str = ""
    #: Which `[apis.*]` policy model calls go through.
    api: str = "openai"
    system_prompt: str = ""
    max_steps: int = Field(default=6, ge=1)
    history_tokens: int = Field(default=6000, ge=256)
    max_output_tokens: int = Field(default=1024, ge=16)
    temperature: float | None = None
    #: Seconds one model call may take in all: waiting for capacity, every attempt and
    #: the backoff between them.
    timeout: float = Field(default=120.0, gt=0)
    #: Seconds one attempt may take before it is abandoned (and retried while no text has
    #: reached the user); 0: only `timeout`. Keep it below `timeout`, so a hung attempt
    #: leaves time for another.
    attempt_timeout: float = Field(default=60.0, ge=0)
    #: Seconds a streamed reply may go without a chunk (waiting for the first included)
    #: before the attempt is abandoned; 0: no idle bound.
    stream_idle_timeout: float = Field(default=30.0, ge=0)


class McpServerConfig(_Section):
    """`[[mcp.servers]]`: one MCP tool server, over streamable HTTP (`url`) or stdio (`command`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    url: str = ""
    command: str = ""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    #: Which `[apis.*]` policy this server's tool calls go through.
    api: str = "zapier"
    #: Seconds one MCP request (handshake, listing or tool call) may take.
    timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if bool(self.url) == bool(self.command):
            raise ValueError("give exactly one of url (streamable HTTP) or command (stdio)")
        return self

    def resolved_url(self) -> str:
        """`url` with `${NAME}` expanded (`UnsetVariable` when NAME is not set)."""
        return expand_env(self.url, where=f"{self.key}.url")

    def resolved_headers(self) -> dict[str, str]:
        """`headers` with `${NAME}` expanded (`UnsetVariable` when NAME is not set)."""
        return {k: expand_env(v, where=f"{self.key}.headers.{k}") for k, v in self.headers.items()}

    def resolved_command(self) -> str:
        """`command` as a path: from PATH, else the running interpreter's bin (the venv)."""
        return find_command(self.command)

    def resolved_env(self) -> dict[str, str]:
        """`env` with `${NAME}` expanded (`UnsetVariable` when NAME is not set)."""
        return {k: expand_env(v, where=f"{self.key}.env.{k}") for k, v in self.env.items()}

    @property
    def key(self) -> str:
        """How messages name this server's table: `mcp.servers[NAME]`."""
        return f"mcp.servers[{self.name}]"

    def env_references(self) -> list[tuple[str, str]]:
        """(variable, key) for every `${NAME}` in url, headers and env."""
        fields = [("url", self.url)]
        fields += [(f"headers.{k}", v) for k, v in self.headers.items()]
        fields += [(f"env.{k}", v) for k, v in self.env.items()]
        return [(m.group(1), f"{self.key}.{f}") for f, v in fields for m in _ENV_REF.finditer(v)]


class McpConfig(_Section):
    """`[mcp]`: tool servers."""

    servers: list[McpServerConfig] = Field(default_factory=list)
    #: Seconds between reconnection attempts to a server that is down.
    reconnect_interval: float = Field(default=15.0, gt=0)


class SlackConfig(_Section):
    """`[slack]`: the Slack channel."""

    mode: Literal["socket", "http", "off"] = "off"
    #: The Web API base URL (tests point it at a local server).
    api_url: str = "https://slack.com/api/"
    allowed_channels: list[str] = Field(default_factory=list)
    allowed_users: list[str] = Field(default_factory=list)
    #: Which `[apis.*]` policy Slack Web API calls go through.
    api: str = "slack"


class ServerConfig(_Section):
    """`[server]`: the HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Bearer token for the API and admin endpoints (empty = open). Prefer the env variable.
    api_token: SecretStr = SecretStr("")
    max_text_bytes: int = Field(default=32 * 1024, ge=1)
    #: Conversations answered at once; more are queued up to `max_queued` then refused (503).
    max_active_conversations: int = Field(default=64, ge=1)
    max_queued: int = Field(default=1000, ge=0)
    #: Seconds an event-stream client may leave a send unread before it is disconnected.
    stream_send_timeout: float = Field(default=30.0, gt=0)
    #: This replica's name in /healthz, /stats, the dashboard and metrics (default HOSTNAME-PID).
    instance_id: str = Field(default="", max_length=128)
    #: Processes serving the one port (`livia serve --workers N`); more than one needs
    #: `[coordination] backend = "redis"` so they share the limits.
    workers: int = Field(default=1, ge=1, le=64)
    #: Host names (``Host`` header) served besides the bound host, localhost, 127.0.0.1,
    #: [::1] and IP literals; ".example.com" admits sub-domains, "*" any (DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Origins (``scheme://host[:port]``) whose pages may call the API besides the allowed
    #: hosts' own; "*" allows any page (cross-site requests).
    allowed_origins: list[str] = Field(default_factory=list)

    def resolved_instance_id(self) -> str:
        """`instance_id`, or ``HOSTNAME-PID`` when unset."""
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"


class StoreConfig(_Section):
    """`[store]`: where conversations, the inbox and history live."""

    url: str = "sqlite:///var/livia.db"
    #: Seconds a replica holds a claimed message without renewing it; a dead replica's
    #: messages are taken over by a live one within about twice this.
    lease: float = Field(default=10.0, gt=0, le=300)


class CoordinationConfig(_Section):
    """`[coordination]`: where limits are kept (one process, or shared through Redis)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Key prefix in Redis, so several deployments can share one server.
    prefix: str = "livia"
    #: Seconds a dead process's slots stay taken before Redis frees them.
    lease_ttl: float = Field(default=60.0, gt=0)
    #: Seconds one Redis command may take.
    timeout: float = Field(default=2.0, gt=0)
    #: While Redis is unreachable: "wait" (no call starts until it answers) or "local"
    #: (each process answers within its share: each limit ÷ the replicas last seen alive).
    on_outage: Literal["wait", "local"] = "wait"


class FilesConfig(_Section):
    """`[files]`: what people may send (images, audio, documents) and image generation."""

    #: Most bytes one file may have; a larger one is refused with a sentence, not downloaded.
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    #: Most files one message may carry; the rest are refused with a sentence.
    max_files: int = Field(default=10, ge=0)
    #: The model `/audio/transcriptions` is asked for (under `[apis.transcription]`).
    transcription_model: str = "whisper-1"
    #: The model `/images/generations` is asked for (under `[apis.images]`).
    image_model: str = "gpt-image-1"
    #: The size generated images are asked for.
    image_size: str = "1024x1024"
    #: Where files sent over HTTP wait for their turn, and generated images are kept.
    spool_dir: str = "var/files"


class Settings(BaseSettings):
    """All of Livia's configuration, validated at start."""

    model_config = SettingsConfigDict(
        env_prefix="LIVIA_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    apis: dict[str, ApiConfig] = Field(default_factory=dict)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    mcp: McpConfig = Field(default_factory=McpConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    coordination: CoordinationConfig = Field(default_factory=CoordinationConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def policies(self) -> dict[str, ApiPolicy]:
        """The upstream policies: the reference defaults with `[apis.*]` applied on top."""
        out = {**DEFAULT_POLICIES, **FILE_POLICIES}
        for name, cfg in self.apis.items():
            out[name] = cfg.apply(out.get(name, ApiPolicy()))
        return out

    # Secrets: environment only.
    @property
    def openai_api_key(self) -> str:
        return os.environ.get("OPENAI_API_KEY", "")

    @property
    def slack_bot_token(self) -> str:
        return os.environ.get("SLACK_BOT_TOKEN", "")

    @property
    def slack_app_token(self) -> str:
        return os.environ.get("SLACK_APP_TOKEN", "")

    @property
    def slack_signing_secret(self) -> str:
        return os.environ.get("SLACK_SIGNING_SECRET", "")

    @property
    def demo_mode(self) -> bool:
        """No key and no endpoint: Livia runs on its built-in simulated model."""
        return not self.openai_api_key and not self.llm.base_url


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def find_command(command: str) -> str:
    """Where `command` is: as given when it holds a path, else on PATH, else in the directory
    of the running interpreter (a venv's `bin`, where `pip install mcp-server-time` puts
    its program even when the venv is not activated). Unfound: `command` unchanged.
    """
    if not command or os.sep in command or (os.altsep and os.altsep in command):
        return command
    found = shutil.which(command)
    if found:
        return found
    beside = shutil.which(command, path=str(Path(sys.executable).parent))
    return beside or command


class UnsetVariable(ConfigError):
    """A `${NAME}` in the configuration names an environment variable that is not set."""

    def __init__(self, missing: list[tuple[str, str]]) -> None:
        #: (variable, the key that uses it), in the order they appear.
        self.missing = missing
        super().__init__("; ".join(f"{name} is not set (used by {key})" for name, key in missing))


def expand_env(value: str, *, where: str | None = None) -> str:
    """Replace `${NAME}` with the environment variable NAME.

    With `where` (the key the value comes from, e.g. `mcp.servers[zapier].url`) an unset
    NAME raises `UnsetVariable` naming both; without it, an unset NAME becomes "".
    A variable set to the empty string counts as set.
    """
    if where is not None:
        missing = [(m.group(1), where) for m in _ENV_REF.finditer(value)]
        missing = [(name, key) for name, key in missing if name not in os.environ]
        if missing:
            raise UnsetVariable(missing)
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from `path` (or `$LIVIA_CONFIG`), the environment and `overrides`.

    Raises `ConfigError` with the offending key named when anything is invalid.
    """
    path = path or os.environ.get("LIVIA_CONFIG") or None
    toml_file: Path | None = None
    if path:
        toml_file = Path(path)
        if not toml_file.is_file():
            raise ConfigError(f"config file not found: {toml_file}")
        try:
            tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_file}: not valid TOML: {exc}") from None
    cls: type[Settings] = type(
        "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": toml_file}}
    )
    try:
        settings = cls(**overrides)
        for name, cfg in settings.apis.items():
            cfg.apply({**DEFAULT_POLICIES, **FILE_POLICIES}.get(name, ApiPolicy()))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known = set(settings.policies())
    used = [("llm.api", settings.llm.api), ("slack.api", settings.slack.api)] + [
        (f"mcp.servers[{s.name}].api", s.api) for s in settings.mcp.servers
    ]
    for key, api in used:
        if api not in known:
            raise ConfigError(
                f"{key}: no [apis.{api}] policy{_did_you_mean(api, known)}; "
                f"known: {', '.join(sorted(known))}"
            )
    refs = [ref for server in settings.mcp.servers for ref in server.env_references()]
    missing = [(name, key) for name, key in refs if name not in os.environ]
    if missing:
        raise UnsetVariable(missing)
    for warning in config_warnings(settings, os.environ):
        if warning not in _warned:  # once per process, however often settings are loaded
            _warned.add(warning)
            log.warning("%s", warning)
    return settings


log = logging.getLogger("livia.config")

#: Warnings already logged by `load_settings` in this process.
_warned: set[str] = set()

#: Upstream policies callers use by name, whatever the configuration says: the built-in
#: upstreams, and `transcription` / `images` (files: audio and image generation).
CALLER_POLICIES = ("openai", "zapier", "slack", "transcription", "images")

#: `LIVIA_*` environment variables that are not settings.
NOT_SETTINGS = ("LIVIA_CONFIG", "LIVIA_SCREENSHOTS", "LIVIA_PROPERTY_EXAMPLES")
#: Prefixes of `LIVIA_*` variables that are not settings (the tests' own).
NOT_SETTINGS_PREFIXES = ("LIVIA_TEST_",)


def config_warnings(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """What in the configuration is probably a typo: policies nothing uses, unknown variables.

    - an `[apis.NAME]` table that no caller uses (not `llm.api`, `slack.api` when Slack is
      on, an MCP server's `api`, nor one of `CALLER_POLICIES`);
    - a `LIVIA_*` environment variable that names no setting (`LIVIA_SERVR__PORT`).
    """
    users = {settings.llm.api, *CALLER_POLICIES, *(s.api for s in settings.mcp.servers)}
    if settings.slack.mode != "off":
        users.add(settings.slack.api)
    out = [
        f"[apis.{name}] is used by nothing{_did_you_mean(name, users)} (policies are used by "
        "llm.api, slack.api, mcp.servers' api, or by name: " + ", ".join(CALLER_POLICIES) + ")"
        for name in settings.apis
        if name not in users
    ]
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("LIVIA_") or upper in NOT_SETTINGS:
            continue
        if upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        problem = _unknown_variable(upper)
        if problem is not None:
            out.append(f"environment variable {name} is not a setting, ignored{problem}")
    return out


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean X?` for the choice nearest `word`, or "" when none is near."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _unwrap(annotation: Any) -> Any:
    """`X` from `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _type_at(loc: Sequence[str | int]) -> Any:
    """The type of the setting at `loc` (e.g. `("apis", "openai")` -> ApiConfig), or None."""
    annotation: Any = Settings
    for part in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return _unwrap(annotation)


def _keys_at(loc: Sequence[str | int]) -> list[str]:
    """The keys of the table at `loc` (empty when it is not a table of fixed keys)."""
    annotation = _type_at(loc)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unknown_variable(name: str) -> str | None:
    """None when `LIVIA_A__B__C` names a setting; else what is wrong with it (maybe a fix)."""
    parts = name.removeprefix("LIVIA_").lower().split("__")
    for depth, part in enumerate(parts):
        annotation = _type_at(parts[:depth])
        if typing.get_origin(annotation) is dict and part:
            continue  # any upstream name under LIVIA_APIS__
        keys = _keys_at(parts[:depth])
        if not keys:  # a list or a value: nothing can follow
            return f": {'__'.join(parts[:depth]).upper()} has no keys"
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
            if close:
                fixed = "__".join([*parts[:depth], close[0], *parts[depth + 1 :]]).upper()
                return f"; did you mean LIVIA_{fixed}?"
            return ""
    return None


def _from_env(loc: Sequence[str | int]) -> str:
    """` (from $LIVIA_…)` when the value at `loc` (or its section) came from a variable."""
    names = {name.upper(): name for name in os.environ}
    for end in range(len(loc), 0, -1):
        candidate = "LIVIA_" + "__".join(str(p) for p in loc[:end]).upper()
        if candidate in names:
            return f" (from ${names[candidate]})"
    below = "LIVIA_" + "__".join(str(p) for p in loc).upper() + "__"
    found = sorted(name for upper, name in names.items() if loc and upper.startswith(below))
    return f" (from ${', $'.join(found)})" if found else ""


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        key = ".".join(str(p) for p in loc) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            keys = _keys_at(loc[:-1])
            hint = _did_you_mean(str(loc[-1]), keys)
            message = f"unknown key{hint}" if hint else f"unknown key; known: {', '.join(keys)}"
        lines.append(f"{key}: {message}{_from_env(loc)}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
