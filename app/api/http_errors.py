"""uvicorn's own answer to a request it cannot parse (a malformed request line, a URL over its
parser's limit) is a plain-text 400 that never reaches the app's error handlers. This protocol
class answers the same 400 in the API's OpenAI error shape; ``kbqa serve`` (and the tests'
live servers) run uvicorn with it (``uvicorn.Config(..., http=http_protocol())``).
"""

from __future__ import annotations

import asyncio
import json

from app.api.errors import error_body

MESSAGE = "invalid HTTP request: malformed, or a request line (URL) longer than the server accepts"


def error_bytes() -> bytes:
    return json.dumps(error_body(MESSAGE, "invalid_request_error", "invalid_http_request")).encode()


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, as uvicorn's `auto` picks, else h11)
    with the 400 for an unparsable request in the OpenAI error shape."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol
        return _h11_protocol()

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = error_bytes()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                ]
            )
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return JsonErrorHttpToolsProtocol


def _h11_protocol() -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = error_bytes()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

    return JsonErrorH11Protocol
