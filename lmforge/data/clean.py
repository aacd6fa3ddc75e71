"""Light, lossless-in-spirit cleaning and exact deduplication of documents."""

from __future__ import annotations

import hashlib


def clean_text(text: str) -> str:
    """Normalise line endings to \n and drop NUL characters; all other whitespace is kept
    (code and verse depend on it, and the Tiny Shakespeare split is defined on the raw characters)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


class Deduplicator:
    """Remembers a 128-bit hash of every document seen; `is_new` is False for exact repeats.

    Memory is about 100 bytes per unique document (a set of 16-byte digests), so ten million
    documents fit in about 1 GB.
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.duplicates = 0

    def is_new(self, text: str) -> bool:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(digest)
        return True
