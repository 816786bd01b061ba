"""Where the terminal clients (`livia chat`, `livia stats`) find the server.

`--url` takes a full URL, `host:port` or `:port`; without it the clients use the
configuration's `[server] host` and `port` (the config file, or `LIVIA_SERVER__*`), the
same values `livia serve` listens on.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlsplit

from livia.config import ConfigError, load_settings
from livia.monitoring.client import TOKEN_ENV

#: Where a client connects when the server listens on every address.
_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def add_url_option(parser: argparse.ArgumentParser) -> None:
    """The clients' `--url` option (default: the configured `[server] host:port`)."""
    parser.add_argument(
        "--url",
        type=client_url,
        default=None,
        help="Livia's address: a URL, host:port or :port "
        "(default: [server] host and port of the config, http://127.0.0.1:8080)",
    )


def client_url(text: str) -> str:
    """`text` as a base URL: `http://` added when no scheme is given, `:port` on 127.0.0.1.

    Raises `argparse.ArgumentTypeError` (a one-line usage error) when it is no address.
    """
    raw = text.strip()
    if raw.isdigit():
        raw = f":{raw}"
    if raw.startswith(":"):
        raw = f"127.0.0.1{raw}"
    if "://" not in raw:
        raw = f"http://{raw}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an address: {text!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"not an address: {text!r}; give http://HOST:PORT, HOST:PORT or :PORT"
        )
    del port  # only validated
    return raw.rstrip("/")


def configured_url(settings: Any) -> str:
    """The base URL of the server the settings describe (`[server] host` and `port`)."""
    host = _ANY_ADDRESS.get(settings.server.host, settings.server.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def resolve(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The server's URL and any extra headers for the client.

    `--url` when given; otherwise the configuration (a `ConfigError` is reported by the
    CLI as usual). The headers carry `[server] api_token` from the configuration when
    `$LIVIA_SERVER__API_TOKEN` is not set (the client sends that one itself).
    """
    url: str | None = getattr(args, "url", None)
    if url and TOKEN_ENV in os.environ:
        return url, {}
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError:
        if url:  # the address is given: a broken config only costs its token
            return url, {}
        raise
    token = settings.server.api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token and TOKEN_ENV not in os.environ else {}
    return url or configured_url(settings), headers
