"""Shared training fixtures: a tiny prepared corpus (the first 120 kB of Tiny Shakespeare, character
level) and a tiny chat model folder."""

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


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A tiny random Llama (dim 32, 2 layers) with a small ChatML byte-level BPE tokenizer trained on
    generated task text, saved as a model folder: fast enough for whole training runs in tests."""
    from lmforge.core.config import ModelConfig
    from lmforge.data.synthetic import make_items
    from lmforge.io.hf import save_pretrained
    from lmforge.model.transformer import Transformer, init_weights
    from lmforge.tokenizer.train import train_bpe

    docs = [f"{i.question} {i.answer}" for task in ("add", "count") for i in make_items(task, 200)]
    tokenizer = train_bpe(docs + ["The answer is 1. Yes, no, maybe."] * 10, vocab_size=400)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=256, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    folder = tmp_path_factory.mktemp("tiny-chat") / "model"
    save_pretrained(model, tokenizer, folder)
    return folder
