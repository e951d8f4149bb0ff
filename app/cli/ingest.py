"""``kbqa ingest`` (foreground, with a progress bar), ``kbqa worker`` (the ingest worker as its
own process) and ``kbqa kb`` (list, delete, search; a knowledge base is created by its first
``kbqa ingest``)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from app.cli.common import ConfigOpt, DataDirOpt, progress_bar, settings_or_exit, setup_logging

kb_app = typer.Typer(help="Manage knowledge bases.", no_args_is_help=True)


def _service(config: Path | None, data_dir: Path | None, **overrides: Any) -> Any:
    from ingest.service import KnowledgeBaseService

    settings = settings_or_exit(config, data_dir=data_dir, **overrides)
    setup_logging("warning")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return KnowledgeBaseService.from_settings(settings)


def _collect(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, name in the KB): files as given, folders recursively (names relative to it)."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                found.append((file, file.relative_to(path).as_posix()))
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise typer.BadParameter(f"no such file or folder: {path}")
    return found


def ingest_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    kb: Annotated[str, typer.Option("--kb", help="Knowledge base (created if missing).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Ingest files in the foreground: progress bar, then a summary."""
    from ingest.errors import IngestError

    service = _service(config, data_dir)
    try:
        service.create_kb(kb, exist_ok=True)
        service.open_kb(kb)
    except IngestError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    files = _collect(paths)
    chunks = duplicates = 0
    failures: list[tuple[str, str]] = []
    claimed: list[Any] = []
    with progress_bar() as progress:
        uploads = progress.add_task("upload", total=len(files))
        for file, name in files:
            try:
                service.check_upload(name, file.stat().st_size)
                result = service.upload(kb, name, file.read_bytes())
            except IngestError as exc:
                failures.append((name, str(exc)))
            else:
                if result.status == "duplicate":
                    duplicates += 1
                elif result.job is not None:
                    job = service.pipeline.claim(result.job.id)
                    if job is not None:  # else a running `kbqa worker` took it
                        claimed.append(job)
            progress.advance(uploads)
        ingesting = progress.add_task("ingest", total=len(claimed))
        step = service.ingest_settings.batch_jobs
        for start in range(0, len(claimed), step):
            for job in service.pipeline.run_jobs(claimed[start : start + step]):
                if job.state == "succeeded":
                    chunks += job.chunks
                else:
                    failures.append((job.filename, job.error or job.state))
                progress.advance(ingesting)
    typer.echo(
        f"kb={kb} files={len(files)} chunks={chunks} duplicates={duplicates} "
        f"failures={len(failures)}"
    )
    for name, reason in failures:
        typer.secho(f"  failed {name}: {reason}", fg=typer.colors.RED)
    service.close()
    if failures and len(failures) == len(files):
        raise typer.Exit(1)


def worker_cmd(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    threads: Annotated[int | None, typer.Option(help="Worker threads (ingest.workers).")] = None,
) -> None:
    """Run the ingest worker as its own process (for deployments that separate it from the API).
    Jobs a killed worker left running are queued again at start."""
    from ingest.service import KnowledgeBaseService
    from ingest.worker import Worker

    settings = settings_or_exit(config, data_dir=data_dir, **{"ingest.workers": threads})
    setup_logging(settings.server.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    service = KnowledgeBaseService.from_settings(settings)
    worker = Worker(
        service.pipeline, max(settings.ingest.workers, 1), settings.ingest.poll_interval_s
    )

    def stop(*_: Any) -> None:
        worker._stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run_forever()
    service.close()


@kb_app.command("list")
def kb_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Knowledge bases with document and chunk counts."""
    service = _service(config, data_dir)
    for kb in service.list_kbs():
        typer.echo(
            f"{kb.name}\tdocuments={kb.documents}\tchunks={kb.chunks}\tmodel={kb.embedding_model}"
        )


@kb_app.command("delete")
def kb_delete(
    name: Annotated[str, typer.Argument(help="Knowledge base.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Delete a knowledge base: its vectors, keyword index and files."""
    from ingest.errors import IngestError

    try:
        _service(config, data_dir).delete_kb(name)
    except IngestError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"deleted {name}")


@kb_app.command("search")
def kb_search(
    name: Annotated[str, typer.Argument(help="Knowledge base.")],
    query: Annotated[str, typer.Argument(help="Question or keywords.")],
    top_k: Annotated[int, typer.Option(help="Results.")] = 5,
    mode: Annotated[str | None, typer.Option(help="dense|keyword|hybrid.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Search a knowledge base; prints JSON lines (score, text, metadata)."""
    from app.rag.search import KnowledgeBaseSearch
    from app.settings.base import SearchMode
    from ingest.errors import IngestError

    searcher = KnowledgeBaseSearch(_service(config, data_dir))
    try:  # an unknown mode: InvalidNameError, an unknown knowledge base: NotFoundError
        hits = searcher.search(name, query, top_k, None, cast(SearchMode | None, mode))
    except IngestError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    for hit in hits:
        typer.echo(json.dumps(hit.to_dict(), ensure_ascii=False))


def register(cli: typer.Typer) -> None:
    cli.command("ingest")(ingest_cmd)
    cli.command("worker")(worker_cmd)
    cli.add_typer(kb_app, name="kb")
