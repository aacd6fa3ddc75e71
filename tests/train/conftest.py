"""A tiny prepared corpus (the first 120 kB of Tiny Shakespeare, character level)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.data.prepare import PrepareOptions, prepare_corpus
from lmforge.tokenizer.train import save_tokenizer, token_byte_lengths, train_tokenizer


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, shared_data) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    text = (shared_data / "tinyshakespeare.txt").read_text()[:120_000]
    (folder / "tiny.txt").write_text(text)
    tokenizer, report = train_tokenizer([str(folder / "tiny.txt")], kind="char")
    save_tokenizer(tokenizer, folder / "tok", report)
    prepare_corpus([str(folder / "tiny.txt")], folder / "data", encode_batch=tokenizer.encode_batch,
                   vocab_size=tokenizer.vocab_size, boundary_id=tokenizer.bos_id, token_bytes=token_byte_lengths(tokenizer),
                   tokenizer_folder=folder / "tok", options=PrepareOptions(val_fraction=0.1, split="tail"))
    return folder / "data"


