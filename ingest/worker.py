"""Ingest workers: threads that take jobs from the persistent queue and run them.

Started beside the API (``ingest.workers`` threads) or as their own process (``kbqa worker``).
On start, jobs left ``running`` by a dead process go back to the queue, and so, from then on,
do jobs whose worker has written no progress for ``ingest.job_lease_s`` (a worker lost on
another host); a job run twice leaves the same result (chunk ids are doc id + index; vectors
are upserted). A job itself runs in :class:`ingest.pipeline.IngestPipeline`.
"""

from __future__ import annotations

import logging
import threading
import time

from ingest.pipeline import IngestPipeline

logger = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        pipeline: IngestPipeline,
        threads: int = 1,
        poll_interval_s: float = 1.0,
        batch_jobs: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.batch_jobs = batch_jobs or pipeline.settings.batch_jobs
        self.threads = threads
        self.poll_interval_s = poll_interval_s
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.lease_s = pipeline.settings.job_lease_s
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()

    def sweep(self) -> int:
        """Queue again the jobs of dead or silent workers (at most every lease/4 seconds)."""
        with self._sweep_lock:
            now = time.monotonic()
            if now < self._next_sweep:
                return 0
            self._next_sweep = now + self.lease_s / 4
        requeued = self.pipeline.catalog.requeue_orphans(self.lease_s)
        if requeued:
            logger.info("event=jobs_requeued count=%d reason=worker_gone", requeued)
        return requeued

    def start(self) -> Worker:
        self.sweep()
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, name=f"kbqa-ingest-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("event=worker_started threads=%d", self.threads)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self.pipeline.run_pending(max_jobs=self.batch_jobs)
                if not jobs:
                    self.sweep()
            except Exception:
                logger.exception("event=worker_error")
                jobs = []
            if not jobs:
                self.pipeline.job_added.wait(self.poll_interval_s)
                self.pipeline.job_added.clear()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.close()

    def close(self) -> None:
        """Stop: a running job is interrupted between batches and goes back to the queue."""
        self._stop.set()
        self.pipeline.stopping.set()
        self.pipeline.job_added.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads.clear()
        self.pipeline.stopping.clear()
        logger.info("event=worker_stopped")
