"""A bounded wait queue in front of the generation slots of one model instance."""

from __future__ import annotations

import asyncio

from app.llm.base import OverloadedError


class Slot:
    """A held generation slot; ``release`` is idempotent."""

    def __init__(self, gate: GenerationGate) -> None:
        self._gate = gate
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate._semaphore.release()


class GenerationGate:
    """``max_concurrency`` generations at once, ``max_queue`` more waiting, the rest 503."""

    def __init__(self, max_concurrency: int, max_queue: int, timeout_s: float) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.waiting = 0

    @property
    def busy(self) -> int:
        return self.max_concurrency - self._semaphore._value

    async def acquire(self) -> Slot:
        if self._semaphore.locked() and self.waiting >= self.max_queue:
            raise OverloadedError(
                f"server busy: {self.busy} generation(s) running and {self.waiting} waiting "
                f"(queue limit {self.max_queue}); retry later"
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self.timeout_s)
        except TimeoutError:
            raise OverloadedError(
                f"no generation slot became free within {self.timeout_s:.0f} s; retry later"
            ) from None
        finally:
            self.waiting -= 1
        return Slot(self)
