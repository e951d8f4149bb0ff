"""What is counted per knowledge base (the BM25 index, the gate's term counts) is rebuilt when
the KB changes, one KB's build never holds up another KB's search, and a deleted KB's counts
do not stay in memory."""

from __future__ import annotations

import threading
from pathlib import Path

from app.settings import load_settings
from ingest.versioned import PerKbCache

WAIT = 60  # seconds: only reached when a build wrongly waits on another (the test then fails)


def test_values_follow_the_version_and_are_built_once() -> None:
    versions = {"a": 1, "b": 1}
    builds: list[str] = []
    cache: PerKbCache[str] = PerKbCache(lambda kb: versions.get(kb, -1))

    def build(kb: str) -> tuple[int, str]:
        builds.append(kb)
        return versions[kb], f"{kb}@{versions[kb]}"

    assert cache.get("a", None, lambda: build("a")) == "a@1"
    assert cache.get("a", None, lambda: build("a")) == "a@1"
    assert builds == ["a"]
    versions["a"] = 2  # an upload
    assert cache.get("a", None, lambda: build("a")) == "a@2"
    assert cache.get("a", "other key", lambda: build("a")) == "a@2"
    assert builds == ["a", "a", "a"]
    # "a" is deleted: the next build (of any KB) drops its values
    del versions["a"]
    assert cache.get("b", None, lambda: build("b")) == "b@1"
    assert cache.knowledge_bases() == {"b"}
    cache.forget("b")
    assert cache.knowledge_bases() == set()


def test_one_kbs_build_does_not_hold_up_another() -> None:
    cache: PerKbCache[str] = PerKbCache(lambda kb: 1)
    started, release = threading.Event(), threading.Event()

    def slow() -> tuple[int, str]:
        started.set()
        assert release.wait(WAIT)
        return 1, "big"

    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(cache.get("big", None, slow)))
    thread.start()
    try:
        assert started.wait(WAIT)
        # "big" is being built (its lock is held): "small" is built meanwhile, and a second
        # caller of "big" waits for the first build instead of starting its own
        assert cache.get("small", None, lambda: (1, "small")) == "small"
        second: list[str] = []
        waiter = threading.Thread(
            target=lambda: second.append(cache.get("big", None, lambda: (1, "again")))
        )
        waiter.start()
        assert not second
    finally:
        release.set()
        thread.join(WAIT)
    waiter.join(WAIT)
    assert got == ["big"] and second == ["big"]


def test_a_kb_being_indexed_does_not_hold_up_the_search_of_another(tmp_path: Path) -> None:
    """Real KBs (catalog, Chroma, embedder): while the BM25 index of one is being built, a
    search of the other answers; deleting a KB drops its gate term counts."""
    from app.rag.search import KnowledgeBaseSearch
    from ingest.service import KnowledgeBaseService

    settings = load_settings(**{"data_dir": tmp_path / "data", "ingest.workers": 0})
    kb = KnowledgeBaseService.from_settings(settings)
    try:
        texts = {"big": "等级保护2.0采用一个中心，三重防护的理念。", "small": "牛佬是香港漫画家。"}
        for name, text in texts.items():
            kb.create_kb(name)
            kb.upload(name, f"{name}.txt", text.encode())
        kb.pipeline.run_pending(max_jobs=10)
        search = KnowledgeBaseSearch(kb)
        assert search.rarity("big").chunks == 1 and search.rarity("small").chunks == 1
        kb.upload("big", "more.txt", "第三级系统应由授权主体配置访问控制策略。".encode())
        kb.pipeline.run_pending(max_jobs=10)
        # as in an API process after a worker's change: both indexes are built on first use
        kb.keyword.forget("big")
        kb.keyword.forget("small")

        real = kb.catalog.all_tokens
        started, release = threading.Event(), threading.Event()

        def slow_tokens(name: str):  # type: ignore[no-untyped-def]
            if name == "big":
                started.set()
                assert release.wait(WAIT)
            return real(name)

        kb.catalog.all_tokens = slow_tokens  # type: ignore[method-assign]
        hits: list[list] = []
        thread = threading.Thread(
            target=lambda: hits.append(search.search("big", "访问控制策略", 3, 0.0, "keyword"))
        )
        thread.start()
        try:
            assert started.wait(WAIT)
            small = search.search("small", "漫画家", 3, 0.0, "keyword")
            assert [h.metadata["filename"] for h in small] == ["small.txt"]
        finally:
            release.set()
            thread.join(WAIT)
        assert [h.metadata["filename"] for h in hits[0]][:1] == ["more.txt"]
        kb.catalog.all_tokens = real  # type: ignore[method-assign]

        kb.delete_kb("big")
        assert search.rarity("small").chunks == 1  # a rebuild is not needed ...
        kb.upload("small", "more.txt", "牛佬原名文启明。".encode())
        kb.pipeline.run_pending(max_jobs=10)
        assert search.rarity("small").chunks == 2  # ... this one drops the deleted KB's
        assert search._rarity.knowledge_bases() == {"small"}
    finally:
        kb.close()
