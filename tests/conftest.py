"""Shared fixtures: a converted packaged model reused by the whole run, and a live server."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# The service's default is the packaged Qwen on llama.cpp. Tests where the model does not
# matter (API plumbing, adapters trained in the test, RAG mechanics) keep the tiny SmolLM2 on
# transformers; the llamacpp tests and the defaults test say what they use.
os.environ.setdefault("KBQA_LLM__MODEL", "smollm2-135m-instruct")
os.environ.setdefault("KBQA_LLM__BACKEND", "transformers")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Packaged models are converted from GGUF once (~30 s) and shared by every test."""
    path = Path(os.environ.get("KBQA_TEST_MODELS_DIR", "/tmp/kbqa-test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, app: Any, port: int, http: Any = None) -> None:
        import uvicorn

        from app.api.http_errors import http_protocol  # the protocol `kbqa serve` runs

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", http=http or http_protocol()
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 300.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during start-up (see log)")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def run_server(app: Any, http: Any = None) -> Iterator[LiveServer]:
    """A real uvicorn server on 127.0.0.1 serving ``app`` in a thread (``http``: uvicorn's
    protocol class; default: the one `kbqa serve` runs)."""
    server = LiveServer(app, free_port(), http=http)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def live_server_factory() -> Callable[[Any], Any]:
    return run_server


def finished_job(client: Any, job_id: str, timeout: float = 300) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` through an httpx client until the job succeeded or failed."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in {"succeeded", "failed"}:
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not finish in {timeout} s: {job}"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def wait_job() -> Callable[..., dict[str, Any]]:
    """``wait_job(client, job_id, timeout=300)``: the finished job (one poller for every
    test that ingests over HTTP)."""
    return finished_job
