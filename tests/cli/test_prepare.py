"""lmforge prepare --scrub-pii / --canaries: identifiers replaced and counted, canaries planted in train."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest

from lmforge.cli.main import main
from lmforge.data.canaries import read_canaries
from lmforge.data.shards import TokenData
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import save_tokenizer, train_tokenizer

TEXT = ("Write to grace.hopper@example.com or call (415) 273-9988. The server 203.0.113.9 logged card "
        "4111 1111 1111 1111 and SSN 078-05-1120.\n")


@pytest.fixture
def corpus(tmp_path):
    docs = [f"document {i}: " + ("plain words and more words " * 20) for i in range(200)] + [TEXT]
    (tmp_path / "corpus.txt").write_text("\f".join(docs))
    (tmp_path / "alphabet.txt").write_text(string.printable)  # placeholders bring characters of their own
    tokenizer, _ = train_tokenizer([str(tmp_path / "corpus.txt"), str(tmp_path / "alphabet.txt")], kind="char")
    save_tokenizer(tokenizer, tmp_path / "tok")
    return tmp_path


def _texts(data: TokenData, split: str) -> str:
    part = getattr(data, split)
    ids = np.concatenate([np.asarray(a) for a in part.arrays()]).tolist() if part.shards else []
    return Tokenizer.from_folder(data.folder / "tokenizer").decode(ids)


def test_scrub_pii_replaces_and_counts(corpus, capsys):
    assert main(["prepare", "--input", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "tok"),
                 "--out", str(corpus / "data"), "--scrub-pii", "--val-fraction", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "PII replaced: EMAIL 1, CREDIT_CARD 1, US_SSN 1, IP_ADDRESS 1, PHONE 1" in out
    data = TokenData.open(corpus / "data")
    assert data.meta["pii_scrubbed"] == {"EMAIL": 1, "IBAN": 0, "CREDIT_CARD": 1, "US_SSN": 1, "IP_ADDRESS": 1, "PHONE": 1}
    everything = _texts(data, "train") + _texts(data, "val")
    assert "Write to <EMAIL> or call <PHONE>. The server <IP_ADDRESS> logged card <CREDIT_CARD> and SSN <US_SSN>." in everything
    assert "hopper" not in everything and "4111" not in everything


def test_canaries_planted_in_train_and_scrubbed_when_pii_shaped(corpus, capsys):
    args = ["prepare", "--input", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "tok"), "--val-fraction", "0.2",
            "--canaries", "4", "--canary-kinds", "digits,ssn", "--canary-repeats", "2,5"]
    assert main(args + ["--out", str(corpus / "plain")]) == 0
    canaries = read_canaries(corpus / "plain" / "canaries.jsonl")
    assert [(c.kind, c.repetitions) for c in canaries] == [("digits", 2), ("ssn", 2), ("digits", 5), ("ssn", 5)]
    train, val = _texts(TokenData.open(corpus / "plain"), "train"), _texts(TokenData.open(corpus / "plain"), "val")
    for canary in canaries:
        assert train.count(canary.text) == canary.repetitions and canary.secret not in val
    assert json.loads((corpus / "plain" / "meta.json").read_text())["canaries"] == {"count": 4, "copies": 14}

    assert main(args + ["--out", str(corpus / "scrubbed"), "--scrub-pii"]) == 0
    train = _texts(TokenData.open(corpus / "scrubbed"), "train")
    for canary in canaries:
        assert train.count(canary.secret) == (canary.repetitions if canary.kind == "digits" else 0)
    assert train.count("'s social security number is <US_SSN>") == 7
    assert len({c.prefix for c in canaries}) == 4  # a made-up name per canary: prefixes of their own


def test_bad_canary_flags(corpus):
    base = ["prepare", "--input", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "tok"), "--out", str(corpus / "x")]
    assert main(base + ["--canaries", "2", "--canary-repeats", "1,zero"]) == 2
    assert main(base + ["--canaries", "2", "--canary-kinds", "passport"]) == 2
    assert not (corpus / "x").exists()
