"""One contract suite for the vector store, run against Chroma embedded and Chroma server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.embeddings import NamedEmbeddings
from ingest.store import VectorStore, collection_name


@pytest.fixture(params=["persistent", "http"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, embeddings: NamedEmbeddings
) -> Iterator[VectorStore]:
    if request.param == "persistent":
        yield VectorStore.persistent(tmp_path / "chroma", embeddings, add_batch_size=3)
    else:
        host, port = request.getfixturevalue("chroma_server")
        yield VectorStore.http(host, port, embeddings, add_batch_size=3)


TEXTS = [
    "北京是中国的首都。",
    "上海是最大的城市。",
    "熊猫吃竹子。",
    "Python is a language.",
    "长江很长。",
]


def _fill(store: VectorStore, kb: str) -> None:
    vectors = store.embeddings.embed_documents(TEXTS)
    ids = [f"doc{i % 2}:{i}" for i in range(len(TEXTS))]
    metas = [{"doc_id": f"doc{i % 2}", "chunk_index": i, "page": None} for i in range(len(TEXTS))]
    store.upsert(kb, ids, TEXTS, vectors, metas)


def test_upsert_query_count(store: VectorStore) -> None:
    kb = f"kb-{uuid.uuid4().hex[:8]}"
    _fill(store, kb)
    _fill(store, kb)  # upsert twice: same ids, no duplicates
    assert store.count(kb) == len(TEXTS)
    hits = store.query(kb, store.embeddings.embed_query("中国的首都在哪里"), 2)
    assert hits[0][1] == TEXTS[0]
    assert -1.0 <= hits[1][3] <= hits[0][3] <= 1.0
    assert hits[0][2]["doc_id"] == "doc0"


def test_delete_doc_and_drop(store: VectorStore) -> None:
    kb = f"kb-{uuid.uuid4().hex[:8]}"
    _fill(store, kb)
    store.delete_doc(kb, "doc0")
    assert store.count(kb) == 2
    assert sorted(store.ids_of_doc(kb, "doc1")) == ["doc1:1", "doc1:3"]
    store.drop(kb)
    names = [getattr(c, "name", c) for c in store.client.list_collections()]
    assert collection_name(store.prefix, kb) not in names


def test_collection_records_model(store: VectorStore) -> None:
    kb = f"kb-{uuid.uuid4().hex[:8]}"
    meta = store.collection(kb).metadata
    assert meta["embedding_model"] == store.embeddings.name
    assert meta["embedding_dim"] == store.embeddings.dim
    assert store.query(kb, store.embeddings.embed_query("x"), 3) == []
