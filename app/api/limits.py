"""Request bodies bounded before a route reads them (``server.max_body_bytes``; uploads:
``server.max_upload_bytes``).

A pure ASGI middleware: a declared ``Content-Length`` over the limit is answered 413 at once,
without reading the body; a body sent without one (chunked) is counted as it arrives and cut
off with the same 413 as soon as it passes the limit. The answer is in the OpenAI error shape,
like every other error of the API.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body


def _message(limit: int, setting: str) -> str:
    return f"the request body is over the limit of {limit} bytes ({setting})"


class BodyTooLarge(HTTPException):
    """Raised inside ``receive`` when a chunked body passes the limit: an HTTPException, so
    the route's body parsing lets it through to the app's 413 handler."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, _message(limit, setting))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_of(self, scope: Scope) -> tuple[int, str]:
        """Multipart uploads get the upload limit; every other body the general one."""
        for name, value in scope.get("headers") or []:
            if name == b"content-type" and value.lower().startswith(b"multipart/form-data"):
                return self.max_upload_bytes, "server.max_upload_bytes"
        return self.max_body_bytes, "server.max_body_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_of(scope)
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _refuse(send, limit, setting)
                    return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, limit, setting)


async def _refuse(send: Send, limit: int, setting: str) -> None:
    body = json.dumps(error_body(_message(limit, setting), "invalid_request_error", "413")).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
