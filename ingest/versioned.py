"""Values computed from a knowledge base's chunks (the BM25 index, the relevance gate's term
counts), kept until the knowledge base changes.

Each is rebuilt on first use after the KB's version number (in the catalog) moves. One build
at a time per knowledge base, so a large KB's build (seconds for tens of thousands of chunks)
never holds up a search of another KB; entries of knowledge bases that no longer exist are
dropped at the next build (or at once by ``forget``), so a service that creates and deletes
KBs does not keep their counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerKbCache(Generic[T]):
    """One value per (knowledge base, key), valid while the KB's version is the one it was
    built at. ``version_of(kb)``: the KB's version number, negative once it is gone."""

    def __init__(self, version_of: Callable[[str], int]) -> None:
        self._version_of = version_of
        self._values: dict[tuple[str, Hashable], tuple[int, T]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, kb: str, key: Hashable, build: Callable[[], tuple[int, T]]) -> T:
        """The value for ``kb`` and ``key``; ``build()`` returns (the version it read, the
        value) and runs only when the KB changed since the last build, once however many
        threads ask at the same time."""
        version = self._version_of(kb)
        cached = self._values.get((kb, key))
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock(kb):
            cached = self._values.get((kb, key))
            if cached is not None and cached[0] == version:
                return cached[1]
            built, value = build()
            self._values[(kb, key)] = (built, value)
        self._drop_deleted(keep=kb)
        return value

    def forget(self, kb: str) -> None:
        """Drop every value of ``kb`` (it was deleted)."""
        with self._guard:
            # list(): a copy made at once (a build may add an entry meanwhile)
            for entry in [e for e in list(self._values) if e[0] == kb]:
                self._values.pop(entry, None)
            self._locks.pop(kb, None)

    def peek(self, kb: str, key: Hashable) -> tuple[int, T] | None:
        """(the version it was built at, the value), or None; never builds."""
        return self._values.get((kb, key))

    def knowledge_bases(self) -> set[str]:
        return {kb for kb, _ in list(self._values)}

    def _lock(self, kb: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(kb, threading.Lock())

    def _drop_deleted(self, keep: str) -> None:
        for kb in self.knowledge_bases() - {keep}:
            if self._version_of(kb) < 0:
                self.forget(kb)
