"""Who may drive Livia from a browser, and the headers every response carries.

A Livia on 127.0.0.1 with no token must not be usable by any web page the user happens
to visit. Two attacks matter:

- **DNS rebinding**: a page on ``evil.example`` re-points its own name at 127.0.0.1 and
  reads Livia's answers as same-origin. Refused by checking the ``Host`` header against
  an allow-list (like Vite's and Jupyter's host checks).
- **Cross-site requests**: a page posts a "simple" (no preflight) request such as a
  ``text/plain`` body. Refused by checking ``Origin`` against an allow-list (like
  Ollama's ``OLLAMA_ORIGINS``) and by requiring ``application/json`` on JSON POSTs.

The allow-lists are `[server] allowed_hosts` and `allowed_origins`; by default they hold
the bound host, ``localhost``, ``127.0.0.1`` and ``[::1]`` (an IP-literal ``Host`` is
always accepted: rebinding needs a name the attacker controls). ``"*"`` allows any.

`SecurityHeaders` adds to every response a Content-Security-Policy (pages set their own,
with the hashes of their inline script and style: `livia.monitoring.page.page_csp`),
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_CSP",
    "FORM_PATHS",
    "LOCAL_HOSTS",
    "SIGNED_PATHS",
    "AllowList",
    "RequestGuard",
    "SecurityHeaders",
    "install_guard",
]

log = logging.getLogger(__name__)

#: Host names a local Livia always answers to.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Paths that authenticate each request themselves (Slack's signature), and probes that
#: load balancers call with whatever Host they like; neither is guarded by Host/Origin.
SIGNED_PATHS = frozenset({"/slack/events"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: JSON endpoints that also take ``multipart/form-data`` (file uploads). Any other
#: POST/PUT/PATCH with a body must be ``application/json``.
FORM_PATHS = frozenset({"/v1/chat"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON_TYPES = frozenset({"application/json"})
_FORM_TYPES = frozenset({"multipart/form-data"})

#: The policy of every response that sets none: nothing from elsewhere, never framed.
DEFAULT_CSP = (
    "default-src 'self'; base-uri 'none'; object-src 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: FastAPI's own API docs load Swagger UI / ReDoc from jsDelivr with an inline start-up
#: script; they get a policy that lets exactly that through.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src 'self' blob:; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'"
)
_PATH_CSP = {"/docs": _DOCS_CSP, "/redoc": _DOCS_CSP}
_STATIC_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def _split_host(value: str) -> str:
    """The host name of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    name, _, _port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _norm_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@dataclass(frozen=True)
class AllowList:
    """The host names and origins a browser may reach Livia through.

    Invariants: with no ``Origin`` header (curl, SDKs, Slack) only ``Host`` is checked;
    an ``Origin`` passes when it is same-origin with the request, its host is an allowed
    host name, or it is listed exactly in ``origins``.
    """

    hosts: frozenset[str]
    #: Entries starting with "." admit every sub-domain (".example.com").
    suffixes: tuple[str, ...] = ()
    origins: frozenset[str] = frozenset()
    any_host: bool = False
    any_origin: bool = False

    @classmethod
    def build(
        cls, bound_host: str = "", hosts: Iterable[str] = (), origins: Iterable[str] = ()
    ) -> AllowList:
        """The defaults (`LOCAL_HOSTS` and `bound_host`) plus the configured entries."""
        names = {h for h in LOCAL_HOSTS}
        bound = _split_host(bound_host) if bound_host else ""
        if bound and bound not in ("0.0.0.0", "::"):
            names.add(bound)
        suffixes = []
        any_host = False
        for entry in hosts:
            entry = entry.strip().lower()
            if entry == "*":
                any_host = True
            elif entry.startswith("."):
                suffixes.append(entry.rstrip("."))
            elif entry:
                names.add(_split_host(entry))
        listed = {_norm_origin(o) for o in origins if o.strip()}
        return cls(
            hosts=frozenset(names),
            suffixes=tuple(suffixes),
            origins=frozenset(listed - {"*"}),
            any_host=any_host,
            any_origin="*" in listed,
        )

    def _named(self, name: str) -> bool:
        return name in self.hosts or any(name.endswith(s) or name == s[1:] for s in self.suffixes)

    def host_ok(self, host_header: str) -> bool:
        """True when Livia may answer a request addressed to `host_header`."""
        if self.any_host:
            return True
        name = _split_host(host_header)
        return bool(name) and (self._named(name) or _is_ip(name))

    def origin_ok(self, origin: str, host_header: str) -> bool:
        """True when a page of `origin` may send this request (addressed to `host_header`)."""
        if self.any_origin:
            return True
        normalized = _norm_origin(origin)
        if normalized in self.origins:
            return True
        try:
            parts = urlsplit(normalized)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file://) and the like
        if parts.netloc == host_header.strip().lower():
            return True  # same-origin
        return self._named(_split_host(parts.netloc))


def _refusal(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status)


class RequestGuard:
    """ASGI middleware: refuse requests whose Host or Origin is not allowed (403), and
    JSON POSTs whose body is not ``application/json`` (415)."""

    def __init__(self, app: ASGIApp, allow: AllowList) -> None:
        self.app = app
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> JSONResponse | None:
        """The refusal for this request, or None when it may go on."""
        path: str = scope.get("path", "")
        if path in SIGNED_PATHS or path in OPEN_PATHS:
            return None
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        method = scope.get("method", "GET")
        if not self.allow.host_ok(host):
            log.warning("refused %s %s: Host %r is not allowed", method, path, host)
            return _refusal(
                403,
                "forbidden_host",
                f"this server does not answer to the host name {host!r}; add it to "
                "[server] allowed_hosts (LIVIA_SERVER__ALLOWED_HOSTS) if it is yours",
            )
        origin = headers.get("origin")
        if origin is not None and not self.allow.origin_ok(origin, host):
            log.warning("refused %s %s: Origin %r is not allowed", method, path, origin)
            return _refusal(
                403,
                "forbidden_origin",
                f"requests from pages of {origin!r} are not allowed; add the origin to "
                "[server] allowed_origins (LIVIA_SERVER__ALLOWED_ORIGINS) if it is yours",
            )
        if method in _BODY_METHODS and _has_body(headers):
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            accepted = _JSON_TYPES | (_FORM_TYPES if path in FORM_PATHS else frozenset())
            if media not in accepted:
                wanted = " or ".join(sorted(accepted))
                return _refusal(
                    415,
                    "unsupported_media_type",
                    f"{method} {path} takes Content-Type: {wanted}, not {media or 'none'!r}",
                )
        return None


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "transfer-encoding" in headers


class SecurityHeaders:
    """ASGI middleware: every response gets the security headers it does not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = _PATH_CSP.get(scope.get("path", ""), DEFAULT_CSP).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", csp))
                for name, value in _STATIC_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def install_guard(
    app: FastAPI, *, bound_host: str = "", hosts: Iterable[str] = (), origins: Iterable[str] = ()
) -> AllowList:
    """Add `RequestGuard` and, outside it, `SecurityHeaders` (so refusals carry them too)."""
    allow = AllowList.build(bound_host, hosts, origins)
    app.add_middleware(RequestGuard, allow=allow)
    app.add_middleware(SecurityHeaders)
    return allow
