"""Several processes, one catalog: kbqa on PostgreSQL against the SQLite default, on
cmrc2018-trial (docs/ + qa.jsonl), with real processes on this machine.

Starts a throwaway PostgreSQL (Debian's binaries, as the tests do) and a Chroma server, then:

1. ingest throughput on PostgreSQL: two `kbqa serve` replicas and W `kbqa worker` processes
   (each its own data dir, as on separate hosts); half the files uploaded through each replica;
   chunks/s from the first upload to the last job succeeded, for W = 1 and W = 2 (ratio);
   checked each time: every job succeeded once, as many distinct chunk ids in the catalog as in
   Chroma, the same hits through both replicas;
2. search latency through `POST /v1/knowledge_bases/{kb}/search` (hybrid, the questions of
   qa.jsonl): p50/p95 on a PostgreSQL replica against one `kbqa serve` on the SQLite default
   with the same files and the same Chroma server (ratio).

Usage: .venv/bin/python bench/scale.py [DATA_DIR] [--queries N] [--workers 1,2] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway PostgreSQL of the tests

from conftest import Postgres, _pg_bindir, free_port, processes  # type: ignore[import-not-found]  # noqa: E402

KBQA = str(Path(sys.executable).parent / "kbqa")
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        time.sleep(0.3)


def serve(procs: list[Any], env: dict[str, str], data_dir: Path) -> httpx.Client:
    port = free_port()
    cmd = [KBQA, "serve", "--port", str(port), "--data-dir", str(data_dir)]
    procs.append(subprocess.Popen(cmd, env=env, **QUIET))
    wait_http(f"http://127.0.0.1:{port}/health")
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)


def upload_and_wait(apis: list[httpx.Client], files: list[Path]) -> tuple[float, list[dict]]:
    """Every file uploaded (alternately through each API); seconds until all jobs finished."""
    started = time.perf_counter()
    job_ids = []
    for n, path in enumerate(files):
        response = apis[n % len(apis)].post(
            "/v1/knowledge_bases/trial/documents",
            files=[("files", (path.name, path.read_bytes()))],
        )
        response.raise_for_status()
        job_ids.append(response.json()["data"][0]["job"]["id"])
    while True:
        jobs = [apis[0].get(f"/v1/jobs/{j}").json() for j in job_ids]
        if all(j["state"] in ("succeeded", "failed") for j in jobs):
            return time.perf_counter() - started, jobs
        time.sleep(0.2)


def chunk_ids(api: httpx.Client) -> list[str]:
    docs = api.get("/v1/knowledge_bases/trial/documents").json()["data"]
    return [
        c["chunk_id"]
        for d in docs
        for c in api.get(f"/v1/knowledge_bases/trial/documents/{d['id']}/chunks").json()["data"]
    ]


def search_ms(api: httpx.Client, questions: list[str]) -> tuple[list[float], list[list[str]]]:
    times, hits = [], []
    for question in questions:
        started = time.perf_counter()
        response = api.post(
            "/v1/knowledge_bases/trial/search", json={"query": question, "mode": "hybrid"}
        )
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        hits.append([h["chunk_id"] for h in response.json()["data"]])
    return times, hits


def postgres_run(
    pg: Postgres, chroma: int, workers: int, files: list[Path], questions: list[str], tmp: Path
) -> dict[str, Any]:
    prefix = f"scale{workers}"
    env = {
        **os.environ,
        "KBQA_CATALOG__URL": pg.database(),
        "KBQA_VECTORSTORE__CHROMA_HOST": "127.0.0.1",
        "KBQA_VECTORSTORE__CHROMA_PORT": str(chroma),
        "KBQA_VECTORSTORE__COLLECTION_PREFIX": prefix,
        "KBQA_LLM__BACKEND": "none",
        "KBQA_INGEST__WORKERS": "0",
        "KBQA_INGEST__POLL_INTERVAL_S": "0.2",
    }
    with processes() as procs:
        apis = [serve(procs, env, tmp / f"{prefix}-api{n}") for n in range(2)]
        for n in range(workers):
            cmd = [KBQA, "worker", "--data-dir", str(tmp / f"{prefix}-worker{n}")]
            procs.append(subprocess.Popen(cmd, env=env, **QUIET))
        apis[0].post("/v1/knowledge_bases", json={"name": "trial"}).raise_for_status()
        seconds, jobs = upload_and_wait(apis, files)
        ids = chunk_ids(apis[1])
        from app.settings import Settings
        from ingest.embeddings import build_embeddings
        from ingest.store import VectorStore

        store = VectorStore.http(
            "127.0.0.1", chroma, build_embeddings(Settings().embeddings), prefix=prefix
        )
        times, hits = search_ms(apis[0], questions)
        _, hits_other = search_ms(apis[1], questions)
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "chunks": len(ids),
        "chunks_per_s": round(len(ids) / seconds, 1),
        "jobs_succeeded_once": sum(j["state"] == "succeeded" and j["attempts"] == 1 for j in jobs),
        "jobs": len(jobs),
        "distinct_chunk_ids": len(set(ids)),
        "chroma_count": store.count("trial"),
        "same_hits_through_both_replicas": sum(
            a == b for a, b in zip(hits, hits_other, strict=True)
        ),
        "queries": len(questions),
        "search_ms": times,
    }


def sqlite_run(chroma: int, files: list[Path], questions: list[str], tmp: Path) -> dict[str, Any]:
    """One `kbqa serve` on the SQLite catalog with its ingest thread, on the same Chroma
    server: the search latency differs by the catalog alone."""
    env = {
        **os.environ,
        "KBQA_VECTORSTORE__CHROMA_HOST": "127.0.0.1",
        "KBQA_VECTORSTORE__CHROMA_PORT": str(chroma),
        "KBQA_VECTORSTORE__COLLECTION_PREFIX": "sqlite",
        "KBQA_LLM__BACKEND": "none",
        "KBQA_INGEST__WORKERS": "1",
    }
    with processes() as procs:
        api = serve(procs, env, tmp / "sqlite")
        api.post("/v1/knowledge_bases", json={"name": "trial"}).raise_for_status()
        seconds, jobs = upload_and_wait([api], files)
        times, _ = search_ms(api, questions)
    return {"seconds": round(seconds, 2), "jobs": len(jobs), "search_ms": times}


def chroma_server(tmp: Path, procs: list[Any]) -> int:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(tmp / "chroma")]
    procs.append(subprocess.Popen([*cmd, "--port", str(port)], **QUIET))
    wait_http(f"http://127.0.0.1:{port}/api/v2/heartbeat")
    return port


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--workers", default="1,2", help="worker processes of each PostgreSQL run (e.g. 2)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = Path(args.data) / "cmrc2018-trial"
    files = sorted((base / "docs").glob("*.txt"))
    qa = [json.loads(line) for line in (base / "qa.jsonl").read_text().splitlines() if line]
    questions = [q["question"] for q in qa[: args.queries]]
    bindir = _pg_bindir()
    if bindir is None:
        sys.exit("PostgreSQL's initdb not found: apt-get install postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="kbqa-bench-scale-"))
    pg = Postgres(bindir)
    try:
        with processes() as procs:
            chroma = chroma_server(tmp, procs)
            counts = [int(w) for w in args.workers.split(",")]
            runs = [postgres_run(pg, chroma, w, files, questions, tmp) for w in counts]
            sqlite = sqlite_run(chroma, files, questions, tmp)
    finally:
        pg.stop()
    report(runs, sqlite, args.out)


def report(runs: list[dict[str, Any]], sqlite: dict[str, Any], out: Path | None) -> None:
    for run in runs:
        print(
            f"postgres, 2 API replicas + {run['workers']} worker(s): {run['chunks']} chunks "
            f"in {run['seconds']} s = {run['chunks_per_s']} chunks/s; jobs succeeded once "
            f"{run['jobs_succeeded_once']}/{run['jobs']}; distinct chunk ids "
            f"{run['distinct_chunk_ids']} (Chroma {run['chroma_count']}); same hits through "
            f"both replicas {run['same_hits_through_both_replicas']}/{run['queries']}"
        )
    first, last = runs[0], runs[-1]
    if len(runs) > 1:
        ratio = last["chunks_per_s"] / first["chunks_per_s"]
        print(f"ingest throughput, {last['workers']} workers vs {first['workers']}: {ratio:.2f}x")
    pg_ms, lite_ms = last["search_ms"], sqlite["search_ms"]
    print(
        f"search (hybrid, {len(pg_ms)} queries) p50/p95: postgres {pct(pg_ms, 50)} / "
        f"{pct(pg_ms, 95)} ms, sqlite {pct(lite_ms, 50)} / {pct(lite_ms, 95)} ms; p95 ratio "
        f"postgres/sqlite {pct(pg_ms, 95) / pct(lite_ms, 95):.2f}x"
    )
    print(
        f"sqlite, one kbqa serve with its ingest thread: {sqlite['seconds']} s for "
        f"{sqlite['jobs']} files"
    )
    if out is not None:
        out.write_text(json.dumps({"postgres": runs, "sqlite": sqlite}, indent=1))


if __name__ == "__main__":
    main()
