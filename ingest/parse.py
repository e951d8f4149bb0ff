"""Parsing a job's file (load -> split) out of the worker's process.

Each worker thread's files are read and split in a child process (:class:`ParseProcess`)
that is killed when it runs over ``ingest.parse_timeout_s``: the job fails with that reason
and the worker goes on to the next job. A corrupt or hostile file can use up its own time and
memory, never the worker's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import traceback
from typing import IO, Any

from app.settings.ingest import IngestSettings
from ingest.errors import DocumentError, InterruptedJob, ParseTimeoutError
from ingest.loaders import load
from ingest.models import Chunk
from ingest.splitter import Splitter

logger = logging.getLogger(__name__)

# imported by a new parse process before its first job, so that they do not count against
# the job's time limit
_PARSER_IMPORTS = ("docx", "pypdf", "bs4", "charset_normalizer")
# the parse process: a fresh interpreter with the worker's sys.path
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from ingest.parse import parse_process_main; parse_process_main()"
)


_TIMED_OUT = object()


def parse_document(
    data: bytes, filename: str, settings: IngestSettings, splitter: Splitter
) -> list[Chunk]:
    """load -> split: the CPU-heavy part of a job (run in the parse process)."""
    segments = load(
        data,
        filename,
        max_unzipped_bytes=settings.max_unzipped_bytes,
        max_zip_ratio=settings.max_zip_ratio,
        max_xml_bytes=settings.max_xml_bytes,
    )
    _, chunks = splitter.split(segments)
    return chunks


def _send(stream: IO[bytes], message: object) -> None:
    """One message: its pickle's length (8 bytes) and the pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "big"))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes:
    head = stream.read(8)
    size = int.from_bytes(head, "big") if len(head) == 8 else -1
    data = stream.read(size) if size >= 0 else b""
    if size < 0 or len(data) < size:
        raise EOFError
    return data


def parse_process_main() -> None:
    """The parse process: parse requests on stdin, replies on stdout, until stdin closes."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a library prints goes to stderr, not into the replies
    requests = sys.stdin.buffer
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()
    for name in _PARSER_IMPORTS:
        importlib.import_module(name)
    _send(replies, ("ready", None))
    while True:
        try:
            data, filename, settings, splitter = pickle.loads(_read_frame(requests))
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", parse_document(data, filename, settings, splitter))
        except Exception as exc:
            exc.add_note(f"in the parse process:\n{traceback.format_exc()}")
            reply = ("error", exc)
        try:
            _send(replies, reply)
        except Exception as exc:  # an exception that does not pickle
            _send(replies, ("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _exit_when_orphaned() -> None:
    """End the parse process when the worker process dies: killed mid-parse, it would
    otherwise parse on (POSIX: its parent id changes)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _read_replies(stream: IO[bytes], replies: queue.Queue[Any]) -> None:
    """The worker's side: the parse process's replies into a queue; None when it ends."""
    while True:
        try:
            frame = _read_frame(stream)
        except (EOFError, OSError, ValueError):
            break
        try:
            replies.put(pickle.loads(frame))
        except Exception as exc:
            replies.put(("error", RuntimeError(f"unreadable reply of the parse process: {exc!r}")))
    replies.put(None)


class ParseProcess:
    """A child process that parses files for one worker thread, under a time limit.

    Why a process: parsing runs library code (lxml under python-docx, pypdf, BeautifulSoup)
    whose single calls can take minutes on a hostile or pathological file (python-docx's
    lookup of vertically merged cells grows with the square of a table's rows). A Python
    thread cannot be stopped, and deadline checks inside the loaders would not run during
    such calls; a process can be killed. On a timeout the child is killed (its memory goes
    with it) and the next parse starts a new one; otherwise the child is reused from job to
    job, so a job pays only for sending the file and its chunks through a pipe.

    The child is a fresh interpreter (``python -c``, ~0.5 s to start and import the
    loaders), not ``multiprocessing``: forking the multi-threaded API process is unsafe, and
    "spawn"/"forkserver" children import the parent's main script again, which runs the
    top-level code of any script without an ``if __name__ == "__main__"`` guard.
    """

    def __init__(self, timeout_s: float, stopping: threading.Event | None = None) -> None:
        self.timeout_s = timeout_s
        self.stopping = stopping or threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[Any] = queue.Queue()

    def parse(
        self, data: bytes, filename: str, settings: IngestSettings, splitter: Splitter
    ) -> list[Chunk]:
        """The file's chunks. Raises ``ParseTimeoutError`` when the time is up,
        ``InterruptedJob`` when the worker stops, or what the parse raised."""
        request = (data, filename, settings, splitter)
        try:
            _send(self._ready(), request)
        except OSError:  # the child ended since its last job: start another
            self.kill()
            _send(self._ready(), request)
        reply = self._await(self.timeout_s)
        if reply is _TIMED_OUT:
            logger.warning(
                "event=parse_timeout file=%s limit_s=%g note=parse process killed",
                filename,
                self.timeout_s,
            )
            raise ParseTimeoutError(
                f"{filename}: reading the file took longer than the limit of "
                f"{self.timeout_s:g} s (setting ingest.parse_timeout_s) and was stopped; "
                "the file is too large or too complex (e.g. huge tables): split it into "
                "smaller files or save it in a simpler format, or raise the limit"
            )
        if reply is None:
            code = self._proc.wait(10) if self._proc is not None else None
            self.kill()
            raise DocumentError(
                f"{filename}: the process reading the file died (exit code {code}; out of "
                "memory?); split the file into smaller files and upload them again"
            )
        status, payload = reply
        if status == "error":
            raise payload
        return list(payload)

    def _await(self, seconds: float) -> Any:
        """The child's next reply (None: it ended); ``_TIMED_OUT`` after ``seconds`` (the
        child is killed then); ``InterruptedJob`` when the worker stops meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self._replies.get(timeout=0.2)
            except queue.Empty:
                pass
            if self.stopping.is_set():
                self.kill()
                raise InterruptedJob()
            if time.monotonic() >= deadline:
                self.kill()
                return _TIMED_OUT

    def _ready(self) -> IO[bytes]:
        """The running child's stdin; a new child is started (and awaited) when needed."""
        if self._proc is not None and self._proc.poll() is None and self._proc.stdin:
            return self._proc.stdin
        self.kill()
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps(sys.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self._proc, self._replies = proc, queue.Queue()
        threading.Thread(
            target=_read_replies, args=(proc.stdout, self._replies), daemon=True
        ).start()
        ready = self._await(120)
        if ready is _TIMED_OUT:
            raise RuntimeError("the parse process did not start within 120 s")
        if ready is None:
            code = proc.wait(10)
            self.kill()
            raise RuntimeError(f"the parse process exited on start (code {code}; see its log)")
        logger.info("event=parse_process_started pid=%d", proc.pid)
        return proc.stdin

    def kill(self) -> None:
        """Stop the child now (a running parse is lost)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)
            _close(proc.stdin, proc.stdout)

    def close(self) -> None:
        """Let the child end (it does when its stdin closes), else kill it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _close(proc.stdin)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        _close(proc.stdout)  # after the child ended: the reply reader holds it until EOF


def _close(*pipes: IO[bytes] | None) -> None:
    for pipe in pipes:
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class Parser:
    """Parses a job's file: in a :class:`ParseProcess` of the calling thread under
    ``ingest.parse_timeout_s``, or in the thread itself when that is 0."""

    def __init__(self, settings: IngestSettings, stopping: threading.Event) -> None:
        self.settings = settings
        self.stopping = stopping
        self._processes: dict[int, ParseProcess] = {}  # by thread id
        self._lock = threading.Lock()

    def parse(self, data: bytes, filename: str, splitter: Splitter) -> list[Chunk]:
        if self.settings.parse_timeout_s <= 0:
            return parse_document(data, filename, self.settings, splitter)
        thread = threading.get_ident()
        with self._lock:
            process = self._processes.get(thread)
            if process is None:
                process = ParseProcess(self.settings.parse_timeout_s, self.stopping)
                self._processes[thread] = process
        return process.parse(data, filename, self.settings, splitter)

    def close(self) -> None:
        with self._lock:
            processes, self._processes = list(self._processes.values()), {}
        for process in processes:
            process.close()
