"""Citation markers that match the sources: the prompt numbers the passages [1]..[n]; a marker
the model writes outside that range (a small model invents [7] for five passages, or cites in
an answer that has no passages) would point at nothing, so it is dropped from the answer.

Works on a token stream: text after an opening ``[`` is held back until the marker closes (or
turns out not to be one), so a streamed answer and a whole one are the same text.
"""

from __future__ import annotations

import re

_MARKER = re.compile(r"\[(\d{1,3})\]")
_LONGEST = len("[999]")


class CitationFilter:
    def __init__(self, sources: int) -> None:
        self.sources = sources
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` (after what was held back) that can be sent now."""
        text = self._held + text
        self._held = ""
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut < _LONGEST:
            tail = text[cut + 1 :]
            if tail == "" or tail.isdigit():  # maybe the start of a marker
                text, self._held = text[:cut], text[cut:]
        return self._clean(text)

    def flush(self) -> str:
        """What is still held back, at the end of the answer."""
        text, self._held = self._held, ""
        return self._clean(text)

    def _clean(self, text: str) -> str:
        def keep(match: re.Match[str]) -> str:
            return match.group(0) if 1 <= int(match.group(1)) <= self.sources else ""

        return _MARKER.sub(keep, text)


def cited(text: str) -> list[int]:
    """The marker numbers in an answer, in order."""
    return [int(n) for n in _MARKER.findall(text)]


_CONTENT = re.compile(r"[^\W_]", re.UNICODE)  # a letter, digit or CJK character
_MARKER_OR_START = re.compile(r"\[\d*\]?")  # "[1]", or "[1" still to be closed


class ContentGate:
    """Holds an answer back until it says something besides citation markers, spaces and
    punctuation: an answer that is only "[1]" (a small model's habit) must never reach the
    user. ``answered`` tells at the end whether anything was let through."""

    def __init__(self) -> None:
        self._held = ""
        self.answered = False

    def feed(self, text: str) -> str:
        if self.answered:
            return text
        self._held += text
        if _CONTENT.search(_MARKER_OR_START.sub("", self._held)):
            self.answered = True
            text, self._held = self._held, ""
            return text
        return ""
