"""Shared fixtures: the packaged models converted once for the whole run, live uvicorn
servers (one per configuration, shared by every module that uses it, see ``SERVERS``), and
the job poller."""

from __future__ import annotations

import os
import socket
import subprocess
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


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in; on exit each is terminated (killed after 60 s)."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def started_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """``processes()`` for a test: what it starts is stopped at teardown."""
    with processes() as started:
        yield started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def free_ports() -> Callable[[], int]:
    """``free_port`` for tests and conftests in subfolders (they cannot import this module)."""
    return free_port


class LiveServer:
    def __init__(self, app: Any, port: int, http: Any = None) -> None:
        import uvicorn

        from app.api.http_errors import http_protocol  # the protocol `kbqa serve` runs

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.app = app
        self.settings: Any = None  # of a shared server (ServerPool)
        self.model: str | None = None
        self.api_key: str | None = None  # None: no key needed
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
    """A server of one test's own app (an app built for that test alone: a trained adapter,
    a wrapped embedder); configurations that several tests use are in ``SERVERS``."""
    return run_server


# ------------------------------------------------------------------ shared live servers
API_KEY = "test-key-123"


def make_adapter(models_dir: Path, out: Path, model: str = "smollm2-135m-instruct") -> Path:
    """A LoRA adapter of ``model`` with random (non-zero) weights: it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from app.llm.models import resolve_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(model, models_dir).path)
    config = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


def _model_server(model: str, backend: str) -> Callable[[Path, Path], dict[str, Any]]:
    """A model on ``backend`` with a random adapter ``test-lora``, the API key on, one slot
    and no queue (a second request while one runs is 503), answers of 16 tokens unless the
    request asks for more, small chunks."""

    def overrides(tmp: Path, models_dir: Path) -> dict[str, Any]:
        return {
            "models_dir": models_dir,
            "llm.backend": backend,
            "llm.model": model,
            "api_keys": [API_KEY],
            "llm.context_length": 1024,
            "llm.max_concurrency": 1,
            "llm.max_queue": 0,
            "llm.max_new_tokens": 16,
            "llm.adapters": {"test-lora": str(make_adapter(models_dir, tmp / "adapter", model))},
            "ingest.chunk_size": 120,
            "ingest.chunk_overlap": 10,
        }

    return overrides


def _web(tmp: Path, models_dir: Path) -> dict[str, Any]:
    """The web page's: SmolLM2, the API key on, 32-token answers, page-sized chunks."""
    return {
        "models_dir": models_dir,
        "api_keys": [API_KEY],
        "llm.context_length": 1024,
        "llm.max_new_tokens": 32,
        "ingest.chunk_size": 300,
        "ingest.chunk_overlap": 40,
        "ingest.poll_interval_s": 0.2,
    }


def _no_llm(tmp: Path, models_dir: Path) -> dict[str, Any]:
    """Knowledge bases, ingest and search without a model: no key, small chunks and files."""
    return {
        "models_dir": models_dir,
        "llm.backend": "none",
        "ingest.workers": 1,
        "ingest.poll_interval_s": 0.1,
        "ingest.chunk_size": 120,
        "ingest.chunk_overlap": 20,
        "ingest.max_file_bytes": 4000,
    }


# name -> the settings overrides of that server (given its temp dir and the models dir); the
# data dir is the temp dir's data/
SERVERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "smollm2": _model_server("smollm2-135m-instruct", "transformers"),
    "qwen-llamacpp": _model_server("qwen2.5-coder-0.5b-instruct", "llamacpp"),
    "web": _web,
    "no-llm": _no_llm,
}


class ServerPool:
    """The live servers of ``SERVERS``, each started the first time a test asks for it and
    stopped when the test run ends. A server carries ``app``, ``settings``, ``model`` and
    ``api_key`` (None: no key needed)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.models_dir = models_dir
        self.servers: dict[str, LiveServer] = {}

    def __call__(self, name: str) -> LiveServer:
        if name not in self.servers:
            from app.main import create_app
            from app.settings import load_settings

            tmp = self.tmp_path_factory.mktemp(f"server-{name}")
            overrides = {"data_dir": tmp / "data", **SERVERS[name](tmp, self.models_dir)}
            settings = load_settings(None, **overrides)
            app = create_app(settings)
            server = LiveServer(app, free_port())
            server.start()
            server.settings, server.model = settings, settings.llm.model
            if settings.api_keys:
                server.api_key = settings.api_keys[0].get_secret_value()
            self.servers[name] = server
        return self.servers[name]

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


@pytest.fixture(scope="session")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[ServerPool]:
    """``shared_server(name)``: the live server of configuration ``name`` (``SERVERS``),
    one for the whole run."""
    pool = ServerPool(tmp_path_factory, models_dir)
    yield pool
    pool.close()


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


# ------------------------------------------------------------------ a throwaway PostgreSQL
def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _pg_bindir() -> Path | None:
    """The directory of initdb/pg_ctl: $KBQA_PG_BINDIR, Debian's newest, or the PATH."""
    import shutil

    candidates = [os.environ.get("KBQA_PG_BINDIR", "")]
    candidates += sorted(
        (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    candidates.append(str(Path(found).resolve().parent) if found else "")
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


class Postgres:
    """A PostgreSQL server of this run: initdb in a temp dir, pg_ctl start on a free port of
    127.0.0.1 (as the ``postgres`` user when the tests run as root: initdb refuses root);
    ``database()`` creates an empty database and returns its URL."""

    def __init__(self, bindir: Path) -> None:
        import subprocess
        import tempfile

        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="kbqa-pg-"))
        self.port = free_port()
        self.user = "kbqa"
        self._as: list[str] = []
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data, log = self.dir / "data", self.dir / "log"
        run = subprocess.run
        run(
            [*self._as, str(bindir / "initdb"), "-D", str(data), "-U", self.user, "-A", "trust"],
            check=True,
            capture_output=True,
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [*self._as, str(bindir / "pg_ctl"), "-D", str(data)]
        start = [*pg_ctl, "-l", str(log), "-w", "-o", options, "start"]
        run(start, check=True, capture_output=True)
        self.count = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import psycopg

        self.count += 1
        name = f"kbqa_test_{self.count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def pause(self) -> None:
        """Stop the server, keeping its data (``resume`` starts it again on the same port)."""
        import subprocess

        pg_ctl = [*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data")]
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], check=True, capture_output=True)

    def resume(self) -> None:
        import subprocess

        pg_ctl = [*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data")]
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [*pg_ctl, "-l", str(self.dir / "log"), "-w", "-o", options, "start"]
        subprocess.run(start, check=True, capture_output=True)

    def stop(self) -> None:
        import shutil
        import subprocess

        pg_ctl = [*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data")]
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The run's PostgreSQL server; skipped without PostgreSQL's binaries (apt-get install
    postgresql), failed under CI=true, where .ci/run installs them."""
    bindir = _pg_bindir()
    if bindir is None:
        reason = "PostgreSQL's initdb not found: apt-get install postgresql (or KBQA_PG_BINDIR)"
        if on_ci():
            pytest.fail(f"{reason} (CI=true: .ci/run should have installed it)", pytrace=False)
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if on_ci():
            pytest.fail("psycopg is not installed (pip install -e '.[dev]')", pytrace=False)
        pytest.skip("psycopg is not installed (pip install -e '.[dev]')")
    server = Postgres(bindir)
    yield server
    server.stop()


@pytest.fixture()
def pg_url(postgres: Postgres) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return postgres.database()
