"""No cross-site writes: a request that changes data (POST, PUT, PATCH, DELETE) and carries
a browser's ``Origin`` header is refused (403) unless that origin is the server's own (its
host and port are the request's ``Host``, or ``X-Forwarded-Host`` behind a proxy) or listed in
``server.cors_origins``.

Why: with no API keys (the default on loopback) a page on any site could otherwise make the
visitor's browser POST a multipart form to ``/v1/knowledge_bases/{kb}/documents``: a form
post needs no CORS preflight. Browsers always send ``Origin`` on such a request; curl and the
SDKs send none and are not affected, nor is the web page served by kbqa itself (same origin).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_body

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _netloc(origin: str) -> str | None:
    """``host:port`` of an origin (default ports written out), or None for ``null``/junk."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname.lower()}:{port}"


def _host_netloc(host: str, scheme: str) -> str:
    if ":" in host.rsplit("]", 1)[-1]:  # has a port (IPv6 literals keep their brackets)
        name, _, port = host.rpartition(":")
        return f"{name.lower()}:{port}"
    return f"{host.lower()}:{443 if scheme == 'https' else 80}"


class SameOriginWritesMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {n for n in (_netloc(o) for o in allowed_origins if o != "*") if n}
        self.allow_all = "*" in allowed_origins

    def allows(self, scope: Scope) -> tuple[bool, str]:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is None or self.allow_all:
            return True, ""
        netloc = _netloc(origin)
        if netloc is None:
            return False, origin
        scheme = str(scope.get("scheme") or "http")
        own = {
            _host_netloc(h, scheme)
            for h in (headers.get("host"), headers.get("x-forwarded-host"))
            if h
        }
        if netloc in own or netloc in self.allowed:
            return True, origin
        return False, origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITES:
            await self.app(scope, receive, send)
            return
        allowed, origin = self.allows(scope)
        if allowed:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            error_body(
                f"cross-origin request from {origin!r} refused: only the server's own pages may "
                "change data from a browser; add the origin to server.cors_origins to allow it",
                "permission_error",
                "cross_origin_refused",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
