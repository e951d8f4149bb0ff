"""`kbqa ingest`, `kbqa kb list/search/delete` through the real CLI (typer's runner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli


def test_ingest_folder_summary_then_kb_commands(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "panda.txt").write_text("大熊猫以竹子为食，生活在四川的山林里。", encoding="utf-8")
    (docs / "sub" / "std.md").write_text("# 身份鉴别\n应对登录的用户进行身份标识和鉴别。")
    (docs / "sub" / "copy.txt").write_bytes((docs / "panda.txt").read_bytes())  # same bytes
    (docs / "empty.txt").write_bytes(b"")
    (docs / "tool.exe").write_bytes(b"MZ\x00")
    data = str(tmp_path / "data")
    runner = CliRunner()

    result = runner.invoke(cli, ["ingest", str(docs), "--kb", "std", "--data-dir", data])
    assert result.exit_code == 0, result.output
    assert "kb=std files=5 chunks=2 duplicates=1 failures=2" in result.output
    assert "failed empty.txt" in result.output and "empty" in result.output
    assert "failed tool.exe" in result.output and ".pdf" in result.output  # accepted types

    again = runner.invoke(cli, ["ingest", str(docs), "--kb", "std", "--data-dir", data])
    assert "chunks=0 duplicates=3" in again.output  # re-run: everything known, nothing added

    listed = runner.invoke(cli, ["kb", "list", "--data-dir", data])
    assert listed.exit_code == 0 and "std" in listed.output

    found = runner.invoke(
        cli, ["kb", "search", "std", "身份鉴别", "--mode", "keyword", "--data-dir", data]
    )
    assert found.exit_code == 0, found.output
    first = json.loads(found.output.splitlines()[0])
    assert first["metadata"]["filename"] == "sub/std.md"

    bad = runner.invoke(cli, ["ingest", str(docs), "--kb", "a b", "--data-dir", data])
    assert bad.exit_code == 2 and "error" in bad.output

    deleted = runner.invoke(cli, ["kb", "delete", "std", "--data-dir", data])
    assert deleted.exit_code == 0 and "deleted std" in deleted.output
    assert "std" not in runner.invoke(cli, ["kb", "list", "--data-dir", data]).output
