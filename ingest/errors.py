"""Errors of the ingest layer. The API maps each kind to a status; the CLI prints the message."""

from __future__ import annotations


class IngestError(Exception):
    """Base: a problem a person can act on; the message says what to do."""


class InvalidNameError(IngestError):
    """A knowledge-base name or filename that is not allowed (400)."""


class NotFoundError(IngestError):
    """Unknown knowledge base, document or job (404)."""


class ConflictError(IngestError):
    """The thing exists already, or a knowledge base was built with another model (409)."""


class EmbeddingMismatchError(ConflictError):
    """A knowledge base opened with an embedding model other than the one it was built with."""


class UnsupportedTypeError(IngestError):
    """A file type no loader reads (415)."""


class FileTooLargeError(IngestError):
    """A file over the size limit (413)."""


class InputTooLargeError(IngestError):
    """Too many texts, or a text too long, to embed or search in one request (413)."""


class RequestCancelledError(IngestError):
    """The client went away; the rest of its work was dropped (499, never seen by it)."""


class CatalogUnavailableError(IngestError):
    """The catalog's database cannot be reached (503 with Retry-After); nothing was changed."""


class DocumentError(IngestError):
    """A file that cannot be read: empty, corrupt, encrypted, a zip bomb, binary, too large to
    parse (job fails)."""


class ParseTimeoutError(DocumentError):
    """Reading a file took longer than ``ingest.parse_timeout_s`` (job fails)."""


class InterruptedJob(Exception):
    """The worker is stopping: the job goes back to the queue."""
