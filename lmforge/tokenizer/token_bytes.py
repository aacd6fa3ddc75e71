"""The bytes each token of a byte-level BPE (or SentencePiece byte-fallback) vocabulary stands for."""

from __future__ import annotations

import json
import re

from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["token_bytes"]


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def token_bytes(tokenizer: Tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for; None for special tokens and unknown ids."""
    backend = tokenizer.backend
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    byte_level = any(d.get("type") == "ByteLevel" for d in decoders if isinstance(d, dict))
    alphabet = _bytes_to_unicode()
    out: list[bytes | None] = []
    for idx in range(tokenizer.vocab_size):
        piece = backend.id_to_token(idx)
        if piece is None or idx in tokenizer.special_ids:
            out.append(None)
        elif byte_level:
            try:
                out.append(bytes(alphabet[c] for c in piece))
            except KeyError:  # an added (non-special) token written as plain text
                out.append(piece.encode("utf-8"))
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):  # SentencePiece byte fallback
            out.append(bytes((int(piece[3:5], 16),)))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return [b if b else None for b in out]
