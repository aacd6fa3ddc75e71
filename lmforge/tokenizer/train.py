"""Training tokenizers: byte-level BPE (Hugging Face `tokenizers`) or one token per character.

Both kinds reserve the same special tokens at the lowest ids:
    <|endoftext|>  document boundary, also the BOS id (every document starts with it)
    <|im_start|>, <|im_end|>  chat roles (ChatML; <|im_end|> ends a turn and generation)
    <|pad|>        padding
and carry a ChatML chat template, so a model pretrained with them can be fine-tuned for chat
without growing its vocabulary.

`token_byte_lengths` tells how many UTF-8 bytes each id stands for: bits per byte, a loss that
compares models with different vocabularies, divides by these.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.data.readers import iter_documents
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.core.files import write_text_atomically

BOUNDARY = "<|endoftext|>"
IM_START, IM_END, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = (BOUNDARY, IM_START, IM_END, PAD)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
KINDS = ("bpe", "char")
LARGE_DOCUMENT = 1 << 16  # characters
HELDOUT_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class TokenizerReport:
    kind: str
    vocab_size: int
    train_documents: int
    train_bytes: int
    heldout_documents: int
    heldout_bytes: int
    heldout_tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.heldout_bytes / max(1, self.heldout_tokens)


def _held_out(text: str, every: int) -> bool:
    """Deterministically set aside about one document in `every` for measuring compression."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % every == 0


def _wrap(tok: HFTokenizer) -> Tokenizer:
    return Tokenizer.from_tokenizers(
        tok, bos_id=tok.token_to_id(BOUNDARY), eos_ids=[tok.token_to_id(BOUNDARY), tok.token_to_id(IM_END)],
        chat_template=CHATML_TEMPLATE, add_bos=True, pad_id=tok.token_to_id(PAD),
    )


def train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE: any text encodes without unknown tokens; merges learned from `documents`."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size < minimum:
        raise ValueError(f"a byte-level BPE vocabulary needs at least {minimum} entries (256 bytes + specials), got {vocab_size}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(documents, trainer)
    return _wrap(tok)


def train_char(documents: Iterable[str]) -> Tokenizer:
    """One token per character seen in `documents` (sorted), plus the specials and <|unk|>."""
    chars: set[str] = set()
    for document in documents:
        chars.update(document)
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, UNK, *sorted(chars)))}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))  # no merges: characters stay apart
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS) + [UNK])
    return _wrap(tok)


def train_tokenizer(inputs: list[str], *, vocab_size: int = 8192, kind: str = "bpe", max_bytes: int | None = None,
                    heldout_every: int = 50, text_field: str = "text") -> tuple[Tokenizer, TokenizerReport]:
    """Train on the inputs minus a held-out sample, and measure compression on that sample."""
    if kind not in KINDS:
        raise ValueError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
    heldout: list[str] = []
    counts = {"documents": 0, "bytes": 0, "heldout_bytes": 0}

    def training_documents() -> Iterator[str]:
        for document in iter_documents(inputs, text_field, max_bytes=max_bytes):
            room = counts["heldout_bytes"] < HELDOUT_MAX_BYTES
            if room and len(document) >= LARGE_DOCUMENT:
                # A large document (e.g. all of Tiny Shakespeare) gives its tail to the held-out sample.
                cut = len(document) - len(document) // heldout_every
                document, tail = document[:cut], document[cut:]
                heldout.append(tail)
                counts["heldout_bytes"] += len(tail)
            elif room and _held_out(document, heldout_every):
                heldout.append(document)
                counts["heldout_bytes"] += len(document)
                continue
            counts["documents"] += 1
            counts["bytes"] += len(document.encode("utf-8"))
            yield document

    if kind == "bpe":
        tokenizer = train_bpe(training_documents(), vocab_size)
    else:
        # Characters come from all text, held-out included: a char vocabulary must cover the corpus.
        tokenizer = train_char(iter_documents(inputs, text_field, max_bytes=max_bytes))
        for _ in training_documents():
            pass
    if counts["documents"] == 0:
        raise ValueError(f"no text found in {', '.join(map(str, inputs))}")
    heldout_tokens = sum(len(ids) for ids in tokenizer.encode_batch(heldout)) if heldout else 0
    report = TokenizerReport(kind, tokenizer.vocab_size, counts["documents"], counts["bytes"], len(heldout),
                             sum(len(t.encode("utf-8")) for t in heldout), heldout_tokens)
    return tokenizer, report


def save_tokenizer(tokenizer: Tokenizer, out: str | os.PathLike, report: TokenizerReport | None = None) -> Path:
    out = Path(out)
    tokenizer.save(out)
    if report is not None:
        data = {**report.__dict__, "bytes_per_token": round(report.bytes_per_token, 4)}
        write_text_atomically(out / "tokenizer_report.json", json.dumps(data, indent=2) + "\n")
    return out


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes behind each id: 0 for special tokens; byte-level BPE tokens map one char per byte."""
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int32)
    for token, index in backend.get_vocab(with_added_tokens=True).items():
        if index in tokenizer.special_ids:
            continue
        if byte_level:
            lengths[index] = len(token)  # each char of a byte-level token is one byte
        else:
            lengths[index] = len(tokenizer.decode([index]).encode("utf-8"))
    return lengths
