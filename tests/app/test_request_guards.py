"""What the app checks before any route runs, on a real uvicorn server.

Request bodies (app/api/limits.py): a declared Content-Length over `server.max_body_bytes` is
413 at once, a chunked body is cut off as soon as it passes the limit, uploads have their own
`server.max_upload_bytes`. Browser writes from other sites (app/api/origin.py): 403 unless the
origin is the server's own or in `server.cors_origins`. Every answer is in the OpenAI error
shape, and the server goes on."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.llm.chat import ChatService
from app.llm.gate import GenerationGate
from app.main import create_app
from app.services.container import Services
from app.settings import load_settings

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, live_server_factory: Any) -> Iterator[Any]:
    overrides: dict[str, Any] = {
        "data_dir": tmp_path_factory.mktemp("limits"),
        "server.max_body_bytes": LIMIT,
        "server.max_upload_bytes": 4 * LIMIT,
        "server.cors_origins": ["https://intranet.example"],
    }
    settings = load_settings(**overrides)
    # no model: the limit acts before any service; the chat service without an LLM is 503
    app = create_app(
        settings,
        services_factory=lambda s: Services(chat=ChatService(None, GenerationGate(1, 1, 1))),
    )
    with live_server_factory(app) as live:
        yield live


def _is_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server: Any) -> None:
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 20_000_000}]}
    ).encode()
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    error = _is_openai_error(response, 413)
    assert "server.max_body_bytes" in error["message"] and str(LIMIT) in error["message"]
    assert time.perf_counter() - started < 10


def test_a_chunked_body_is_cut_off_when_it_passes_the_limit(server: Any) -> None:
    """No Content-Length: the body is counted as it arrives and the request answered 413 as
    soon as it passes the limit (httpx sends the rest anyway; the server drops it unread)."""

    def pieces() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(300):  # ~20 MB
            yield b"x" * 65536
        yield b'"}]}'

    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/v1/chat/completions", content=pieces(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        error = _is_openai_error(response, 413)
        assert "server.max_body_bytes" in error["message"]
        # the server goes on: a small request is answered (503: no LLM is configured)
        small = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert small.status_code in (422, 503)


def test_uploads_have_their_own_limit(server: Any, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        big = client.post(
            "/v1/knowledge_bases/kb/documents",
            files=[("files", ("big.txt", b"a" * (5 * LIMIT)))],
        )
        error = _is_openai_error(big, 413)
        assert "server.max_upload_bytes" in error["message"]
        # under the upload limit (over the general one) the body is read: no KB service, 503
        fits = client.post(
            "/v1/knowledge_bases/kb/documents",
            files=[("files", ("fits.txt", b"a" * (2 * LIMIT)))],
        )
        assert fits.status_code == 503


def test_browser_writes_from_other_sites_are_refused(server: Any) -> None:
    port = server.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def post(origin: str | None) -> httpx.Response:
            headers = {"Origin": origin} if origin is not None else {}
            return client.post("/v1/knowledge_bases", json={"name": "kb"}, headers=headers)

        for origin in ("https://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}"):
            error = _is_openai_error(post(origin), 403)
            assert (
                error["code"] == "cross_origin_refused"
                and "server.cors_origins" in (error["message"])
            )
        # no Origin (curl, SDKs), the server's own pages, an allowed origin: through to the
        # route (503 here: this server has no knowledge-base service)
        allowed: list[str | None] = [None, f"http://127.0.0.1:{port}", "https://intranet.example"]
        for ok in allowed:
            assert post(ok).status_code == 503, ok
        # reads are not writes: CORS decides what another site may read
        listed = client.get("/v1/knowledge_bases", headers={"Origin": "https://evil.example"})
        assert listed.status_code == 503
        deleted = client.delete(
            "/v1/knowledge_bases/kb", headers={"Origin": "https://evil.example"}
        )
        assert deleted.status_code == 403


def test_api_docs_are_behind_the_key_and_load_nothing_from_a_cdn(
    tmp_path: Path, live_server_factory: Any
) -> None:
    """/docs and /redoc (Swagger UI and ReDoc from a CDN) are off; /openapi.json needs the
    API key like every route but /health."""
    overrides: dict[str, Any] = {"data_dir": tmp_path, "api_keys": ["k1"]}
    app = create_app(load_settings(**overrides), services_factory=lambda s: Services())
    with live_server_factory(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert client.get(path).status_code == 404, path
        assert _is_openai_error(client.get("/openapi.json"), 401)["code"] == "missing_api_key"
        spec = client.get("/openapi.json", headers={"Authorization": "Bearer k1"})
        assert spec.status_code == 200 and "/v1/chat/completions" in spec.json()["paths"]
        assert "/openapi.json" not in spec.json()["paths"]
        assert client.get("/health").status_code == 200


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (httpx refuses a 100,000-character URL) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_an_unparsable_request_gets_the_openai_error_shape(
    tmp_path: Path, live_server_factory: Any, protocol: str
) -> None:
    """uvicorn answers what it cannot parse itself (no route or handler sees it): a 100,000-
    character URL, a malformed request line. `kbqa serve` runs uvicorn with the protocol of
    app/api/http_errors.py, whose 400 is JSON in the OpenAI shape, for both HTTP parsers."""
    from app.api.http_errors import _h11_protocol, http_protocol

    app = create_app(load_settings(data_dir=tmp_path), services_factory=lambda s: Services())
    http = http_protocol() if protocol == "httptools" else _h11_protocol()
    with live_server_factory(app, http=http) as live:
        requests = [b"GARBAGE\r\n\r\n"]
        if protocol == "httptools":  # h11 passes such a URL on to the app (answered normally)
            requests.append(b"GET /v1/models?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        for request in requests:
            status, headers, body = _raw(live.port, request)
            assert status == 400 and headers["content-type"] == "application/json"
            assert json.loads(body)["error"]["code"] == "invalid_http_request"
        # and the server goes on
        assert httpx.get(f"{live.url}/health", timeout=30).status_code == 200
