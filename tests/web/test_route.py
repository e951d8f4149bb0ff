"""The page's routes without a browser: served by name only, and off with server.web=false."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.services.container import Services
from app.settings import load_settings


def client(tmp_path: Path, web: bool) -> TestClient:
    settings = load_settings(
        None, **{"data_dir": tmp_path, "llm.backend": "none", "server.web": web}
    )
    return TestClient(create_app(settings, services_factory=lambda s: Services()))


def test_page_and_assets(tmp_path: Path) -> None:
    with client(tmp_path, web=True) as c:
        page = c.get("/")
        assert page.status_code == 200 and "<title>kbqa</title>" in page.text
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/web/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/web/app.css").headers["content-type"].startswith("text/css")
        assert c.get("/favicon.ico").headers["content-type"] == "image/svg+xml"
        assert c.get("/web/__init__.py").status_code == 404
        assert c.get("/web/missing.js").json()["error"]["code"] == "not_found"


def test_page_off(tmp_path: Path) -> None:
    with client(tmp_path, web=False) as c:
        assert c.get("/").status_code == 404
        assert c.get("/web/app.js").status_code == 404
        assert c.get("/health").status_code == 200


def test_assets_are_packaged() -> None:
    """setuptools finds app/web (a package) and ships its files (package-data globs)."""
    web = Path(__file__).resolve().parents[2] / "app" / "web"
    assert (web / "__init__.py").is_file()
    for name in ("index.html", "app.js", "app.css", "i18n.js", "favicon.svg"):
        assert (web / name).is_file(), name
