"""Tokenizer training: byte-level BPE and characters, special tokens, compression, byte lengths."""

from __future__ import annotations

import pytest

from lmforge.cli.main import main
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import SPECIAL_TOKENS, save_tokenizer, token_byte_lengths, train_tokenizer

TEXT = ("def add(a, b):\n    return a + b\n\n" * 40) + ("The quick brown fox jumps over the lazy dog. " * 60)


def _files(tmp_path):
    for i in range(60):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Document {i}.\n" + TEXT[i * 7:] + f"\nend {i}\n")
    return [str(tmp_path)]


def test_bpe_has_specials_learns_merges_and_round_trips(tmp_path):
    tokenizer, report = train_tokenizer(_files(tmp_path), vocab_size=400, kind="bpe")
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tokenizer.bos_id == 0 and 2 in tokenizer.eos_ids and tokenizer.pad_id == 3
    assert 300 < tokenizer.vocab_size <= 400
    assert report.heldout_documents > 0 and report.bytes_per_token > 1.5  # merges compress
    unseen = "naïve 日本語 🙂 <|im_end|>"
    assert tokenizer.decode(tokenizer.encode(unseen)) == unseen  # byte-level: nothing is unknown
    assert tokenizer.encode("<|im_start|>user")[0] == 1  # special tokens are single ids
    assert "<|im_start|>" in tokenizer.chat_template


def test_char_tokenizer_is_one_token_per_character(tmp_path):
    (tmp_path / "t.txt").write_text("hello world\nhi")
    tokenizer, report = train_tokenizer([str(tmp_path / "t.txt")], kind="char")
    assert tokenizer.vocab_size == len(SPECIAL_TOKENS) + 1 + len(set("hello world\nhi"))
    ids = tokenizer.encode("hello\n")
    assert len(ids) == 6 and tokenizer.decode(ids) == "hello\n"
    assert tokenizer.decode(tokenizer.encode("hex")) == "he<|unk|>"  # unseen characters map to <|unk|>


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_saved_tokenizer_reloads_and_byte_lengths_add_up(tmp_path, kind):
    tokenizer, report = train_tokenizer(_files(tmp_path), vocab_size=350, kind=kind)
    save_tokenizer(tokenizer, tmp_path / "tok", report)
    again = Tokenizer.from_folder(tmp_path / "tok")
    text = "Document 7.\n    return a + b\n"
    assert again.encode(text) == tokenizer.encode(text) and again.bos_id == 0
    lengths = token_byte_lengths(again)
    sample = ("ü" if kind == "bpe" else "") + text  # a char vocabulary only knows characters it saw
    assert int(lengths[again.encode(sample)].sum()) == len(sample.encode("utf-8"))
    assert lengths[0] == 0  # special tokens stand for no text


def test_transformers_loads_the_trained_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer, report = train_tokenizer(_files(tmp_path), vocab_size=350, kind="bpe")
    save_tokenizer(tokenizer, tmp_path / "tok", report)
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    text = "def add(a, b): return a + b"
    assert hf.encode(text) == tokenizer.encode(text, add_bos=True)


def test_cli_prints_compression(tmp_path, capsys):
    inputs = _files(tmp_path)
    assert main(["tokenizer", "train", "--input", *inputs, "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "bytes per token" in out and (tmp_path / "tok" / "tokenizer.json").is_file()
    assert main(["tokenizer", "train", "--input", *inputs, "--vocab-size", "100", "--out", str(tmp_path / "t2")]) == 2
