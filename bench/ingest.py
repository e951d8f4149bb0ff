"""Ingest and retrieval benchmark on cmrc2018-trial (docs/ + qa.jsonl).

Figures printed:
1. end-to-end ingest chunks/s (upload of every file -> all jobs succeeded, through the worker)
   vs embedding the same chunk texts alone in the same run: ratio (target >= 0.8);
2. hit@1 / hit@5 of the gold document for dense, keyword and hybrid search (target for hybrid:
   hit@5 >= 0.99, hit@1 >= 0.96);
3. p50/p95 hybrid search latency, query embedding included, at the size of the set and at N
   synthetic chunks (random unit vectors, texts drawn from the real chunks' words).

Usage: .venv/bin/python bench/ingest.py [DATA_DIR] [--questions N] [--synthetic N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# run as a script, bench/ comes first on sys.path and this file would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from app.rag.search import KnowledgeBaseSearch  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.settings.base import SearchMode  # noqa: E402
from ingest.models import Document  # noqa: E402
from ingest.service import KnowledgeBaseService  # noqa: E402
from ingest.worker import Worker  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--questions", type=int, default=0, help="0 = all of qa.jsonl")
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--latency-queries", type=int, default=100)
    args = parser.parse_args()
    base = Path(args.data) / "cmrc2018-trial"
    files = sorted((base / "docs").glob("*.txt"))
    qa = [json.loads(line) for line in (base / "qa.jsonl").read_text().splitlines() if line]
    if args.questions:
        qa = qa[: args.questions]

    workdir = Path(tempfile.mkdtemp(prefix="kbqa-bench-ingest-"))
    settings = Settings.model_validate(
        {"data_dir": workdir, "llm": {"backend": "none"}, "ingest": {"workers": 1}}
    )
    service = KnowledgeBaseService.from_settings(settings)
    service.embeddings.embed_query("warm up")
    service.keyword.tokenizer.tokens("预热分词")
    print(f"embedder={service.embeddings.name} dim={service.embeddings.dim} files={len(files)}")
    texts = ingest_throughput(service, settings, files)
    retrieval_quality(service, qa)
    rng = random.Random(0)
    questions = [q["question"] for q in rng.sample(qa, min(args.latency_queries, len(qa)))]
    p50, p95 = latency(service, "cmrc", questions)
    print(f"latency kb=cmrc chunks={len(texts)} hybrid p50={p50:.1f}ms p95={p95:.1f}ms")
    if args.synthetic:
        synthetic_kb(service, texts, args.synthetic, rng)
        p50, p95 = latency(service, "synthetic", questions)
        print(
            f"latency kb=synthetic chunks={args.synthetic} hybrid p50={p50:.1f}ms "
            f"p95={p95:.1f}ms (target p95 <= 100 ms)"
        )
    service.close()
    print(f"workdir={workdir} (delete when done)")


def ingest_throughput(
    service: KnowledgeBaseService, settings: Settings, files: list[Path]
) -> list[str]:
    """1. End to end, upload -> searchable through the worker thread, against embedding the
    same chunks alone; returns the chunks' texts."""
    service.create_kb("cmrc")
    worker = Worker(service.pipeline, settings.ingest.workers, 0.05)
    started = time.perf_counter()
    worker.start()
    jobs = [service.upload("cmrc", f.name, f.read_bytes()).job for f in files]
    pending = {j.id for j in jobs if j is not None}
    while pending:
        pending = {j for j in pending if service.get_job(j).state not in {"succeeded", "failed"}}
        time.sleep(0.05)
    pipeline_s = time.perf_counter() - started
    worker.close()
    failed = [j for j in service.list_jobs("cmrc", 10_000) if j.state != "succeeded"]
    texts = [
        t
        for d in service.list_documents("cmrc")
        for _, t, _ in service.catalog.chunks_of("cmrc", d.doc_id)
    ]
    started = time.perf_counter()
    service.embeddings.embed_documents(texts)
    embed_s = time.perf_counter() - started
    pipeline_cps, embed_cps = len(texts) / pipeline_s, len(texts) / embed_s
    print(
        f"ingest: chunks={len(texts)} failed_jobs={len(failed)} "
        f"pipeline={pipeline_s:.1f}s ({pipeline_cps:.2f} chunks/s) "
        f"embedding_alone={embed_s:.1f}s ({embed_cps:.2f} chunks/s) "
        f"ratio={pipeline_cps / embed_cps:.3f} (target >= 0.8)"
    )
    return texts


def retrieval_quality(service: KnowledgeBaseService, qa: list[dict]) -> None:
    """2. hit@1 and hit@5 of the gold passage per search mode (each question embedded once)."""
    raw_query = service.embeddings.embed_query
    cached = lru_cache(maxsize=None)(lambda q: tuple(raw_query(q)))
    service.embeddings.embed_query = lambda text: list(cached(text))  # type: ignore[method-assign]
    search = KnowledgeBaseSearch(service)
    modes: tuple[SearchMode, ...] = ("dense", "keyword", "hybrid")
    hits = {m: [0, 0] for m in modes}
    for item in qa:
        for mode in modes:
            found = [
                h.metadata["filename"]
                for h in search.search("cmrc", item["question"], 5, 0.0, mode)
            ]
            hits[mode][0] += int(found[:1] == [item["source"]])
            hits[mode][1] += int(item["source"] in found)
    for mode in modes:
        print(
            f"quality mode={mode} questions={len(qa)} hit@1={hits[mode][0] / len(qa):.3f} "
            f"hit@5={hits[mode][1] / len(qa):.3f}"
        )
    service.embeddings.embed_query = raw_query  # type: ignore[method-assign]


def latency(service: KnowledgeBaseService, kb: str, questions: list[str]) -> tuple[float, float]:
    """3. Search latency p50/p95 in ms, query embedding included."""
    search = KnowledgeBaseSearch(service)
    times = []
    for question in questions:
        t = time.perf_counter()
        search.search(kb, question, 5, 0.0, "hybrid")
        times.append((time.perf_counter() - t) * 1000)
    return percentile(times, 50), percentile(times, 95)


def synthetic_kb(
    service: KnowledgeBaseService, texts: list[str], n: int, rng: random.Random
) -> None:
    """4. A knowledge base of ``n`` synthetic chunks (random unit vectors, words of the real
    chunks), written straight into the store and the catalog."""
    service.create_kb("synthetic")
    words = [w for t in texts for w in service.keyword.tokenizer.tokens(t)]
    nrng = np.random.default_rng(0)
    started = time.perf_counter()
    rows = []
    for start in range(0, n, 5000):
        count = min(5000, n - start)
        vectors = nrng.standard_normal((count, service.embeddings.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids, docs, metas = [], [], []
        for i in range(start, start + count):
            tokens = rng.choices(words, k=60)
            ids.append(f"syn:{i}")
            docs.append("".join(tokens))
            meta = {
                "kb": "synthetic",
                "doc_id": "syn",
                "filename": "synthetic.txt",
                "chunk_index": i,
                "chunk_id": f"syn:{i}",
                "start": 0,
                "end": 0,
            }
            metas.append(meta)
            rows.append((f"syn:{i}", i, docs[-1], meta, " ".join(tokens)))
        service.store.upsert("synthetic", ids, docs, vectors.tolist(), metas)
    service.catalog.add_document(
        Document(
            kb="synthetic",
            doc_id="syn",
            filename="synthetic.txt",
            size=0,
            sha256="syn",
            status="queued",
            chunks=0,
            uploaded_at=time.time(),
        )
    )
    service.catalog.commit_document("synthetic", "syn", rows, [])
    KnowledgeBaseSearch(service).search("synthetic", "预热", 5, 0.0, "hybrid")  # BM25 matrix
    print(f"synthetic: chunks={n} built in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
