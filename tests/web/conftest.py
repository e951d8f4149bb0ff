"""Fixtures of the web page tests: Debian's chromium driven by Playwright from PyPI, a live
kbqa with the packaged models, and the output dir for screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(reason: str) -> None:
    """Skip with the reason on a developer machine; fail on CI, where .ci/run installs it."""
    if _on_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run should have installed it)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("KBQA_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Screenshots go here: $KBQA_TEST_OUTPUT/web, or test-output/web in the repo."""
    base = os.environ.get("KBQA_TEST_OUTPUT")
    path = Path(base) / "web" if base else REPO / "test-output" / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        _missing("chromium not found: apt-get install chromium (or set KBQA_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(shared_server: Any) -> Any:
    """kbqa with the packaged SmolLM2 and embedder, API key on, short answers (the shared
    "web" server of tests/conftest.py)."""
    return shared_server("web")


@pytest.fixture(scope="module")
def api_key(server: Any) -> str:
    key: str = server.api_key
    return key
