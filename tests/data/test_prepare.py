"""prepare: dedup, boundary tokens, shards, splits, atomic output; loaders: resume and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.cli.main import main
from lmforge.data.loader import TrainLoader, eval_batches
from lmforge.data.prepare import PrepareOptions, prepare_corpus
from lmforge.data.shards import ShardWriter, TokenData
from lmforge.tokenizer.train import save_tokenizer, token_byte_lengths, train_tokenizer

ALPHABET = "abcdefghij \n"


@pytest.fixture
def char_tokenizer(tmp_path):
    (tmp_path / "alphabet.txt").write_text(ALPHABET)
    tokenizer, _ = train_tokenizer([str(tmp_path / "alphabet.txt")], kind="char")
    save_tokenizer(tokenizer, tmp_path / "tok")
    return tokenizer, tmp_path / "tok"


def _prepare(tmp_path, char_tokenizer, inputs, **options):
    tokenizer, folder = char_tokenizer
    return prepare_corpus([str(i) for i in inputs], tmp_path / "data", encode_batch=tokenizer.encode_batch,
                          vocab_size=tokenizer.vocab_size, boundary_id=tokenizer.bos_id,
                          token_bytes=token_byte_lengths(tokenizer), tokenizer_folder=folder,
                          options=PrepareOptions(**options))


def _stream(split):
    return np.concatenate([np.asarray(a) for a in split.arrays()]) if split.shards else np.zeros(0, np.int64)


def test_documents_deduplicated_separated_and_split_by_hash(tmp_path, char_tokenizer):
    rng = np.random.default_rng(0)
    docs = ["".join(rng.choice(list(ALPHABET[:-1]), size=int(rng.integers(5, 40)))) for _ in range(300)]
    (tmp_path / "docs.txt").write_text("\f".join(docs + docs[:50]))  # 50 exact duplicates
    data = _prepare(tmp_path, char_tokenizer, [tmp_path / "docs.txt"], val_fraction=0.2, shard_tokens=997)
    tokenizer, _ = char_tokenizer
    assert data.meta["duplicates_removed"] == 50 + (300 - len(set(docs)))
    assert len(data.train.shards) > 3  # streamed into several shards
    train, val = _stream(data.train), _stream(data.val)
    texts = [tokenizer.decode(part.tolist()) for part in np.split(train, np.flatnonzero(train == data.boundary_id)) if len(part)]
    val_texts = [tokenizer.decode(part.tolist()) for part in np.split(val, np.flatnonzero(val == data.boundary_id)) if len(part)]
    unique = list(dict.fromkeys(docs))
    assert sorted(t.removeprefix("<|endoftext|>") for t in texts + val_texts) == sorted(unique)
    assert 0.1 < len(val_texts) / len(unique) < 0.3
    assert data.train.bytes + data.val.bytes == sum(len(d) for d in unique)
    assert data.train.dtype == np.uint16


def test_tail_split_is_first_90_percent_train_last_10_percent_val(tmp_path, char_tokenizer):
    tokenizer, _ = char_tokenizer
    text = "".join(np.random.default_rng(1).choice(list(ALPHABET), size=5003))
    (tmp_path / "one.txt").write_text(text)
    data = _prepare(tmp_path, char_tokenizer, [tmp_path / "one.txt"], val_fraction=0.1, split="tail", shard_tokens=640)
    n = len(text)
    assert tokenizer.decode(_stream(data.val).tolist()) == text[int(n * 0.9):]  # nanoGPT's split exactly
    assert tokenizer.decode(_stream(data.train).tolist()) == "<|endoftext|>" + text[:int(n * 0.9)]
    assert data.val.bytes == n - int(n * 0.9)


def test_failed_prepare_leaves_the_previous_folder_untouched(tmp_path, char_tokenizer):
    (tmp_path / "a.txt").write_text("abc abc")
    _prepare(tmp_path, char_tokenizer, [tmp_path / "a.txt"], split="tail", val_fraction=0.5)
    before = (tmp_path / "data" / "meta.json").read_text()
    tokenizer, folder = char_tokenizer

    def broken(texts):
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        prepare_corpus([str(tmp_path / "a.txt")], tmp_path / "data", encode_batch=broken, vocab_size=tokenizer.vocab_size,
                       boundary_id=0, token_bytes=token_byte_lengths(tokenizer), tokenizer_folder=folder)
    assert (tmp_path / "data" / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "alphabet.txt", "data", "tok"]  # no temp folder left


def test_shard_writer_rolls_over_and_checks_dtype(tmp_path):
    writer = ShardWriter(tmp_path, "x", np.uint16, shard_tokens=4)
    writer.write(np.arange(10))
    writer.close()
    assert writer.lengths == [4, 4, 2]
    with pytest.raises(ValueError, match="does not fit"):
        writer.write(np.array([70000]))


def test_open_detects_truncated_shards(tmp_path, char_tokenizer):
    (tmp_path / "a.txt").write_text("abc " * 100)
    data = _prepare(tmp_path, char_tokenizer, [tmp_path / "a.txt"], split="tail")
    shard = data.folder / data.train.shards[0]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="meta.json and shards disagree"):
        TokenData.open(data.folder)


def _toy_data(tmp_path, char_tokenizer, n=4000, shard_tokens=1000):
    text = "".join(np.random.default_rng(2).choice(list(ALPHABET), size=n))
    (tmp_path / "one.txt").write_text(text)
    return _prepare(tmp_path, char_tokenizer, [tmp_path / "one.txt"], val_fraction=0.25, split="tail", shard_tokens=shard_tokens)


def test_train_loader_resumes_exactly_and_splits_windows_across_ranks(tmp_path, char_tokenizer):
    data = _toy_data(tmp_path, char_tokenizer)
    loader = TrainLoader(data.train, seq_len=16, batch_size=4, seed=3)
    for _ in range(7):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(40)]  # crosses into later epochs
    assert loader.epoch >= 1
    again = TrainLoader(data.train, seq_len=16, batch_size=4, seed=3)
    again.load_state_dict(state)
    for (x, y), (ex, ey) in zip((again.next_batch() for _ in range(40)), expected):
        assert x.equal(ex) and y.equal(ey)
        assert x[:, 1:].equal(y[:, :-1])  # targets are inputs shifted by one
    # Two ranks with micro-batch 2 see the same windows as one process drawing 2 + 2.
    single = TrainLoader(data.train, seq_len=16, batch_size=2, seed=5)
    ranks = [TrainLoader(data.train, seq_len=16, batch_size=2, seed=5, rank=r, world=2) for r in range(2)]
    for _ in range(5):
        a, b = single.next_batch()[0], single.next_batch()[0]
        assert a.equal(ranks[0].next_batch()[0]) and b.equal(ranks[1].next_batch()[0])


def test_eval_batches_cover_every_token_once(tmp_path, char_tokenizer):
    data = _toy_data(tmp_path, char_tokenizer, n=3001, shard_tokens=300)
    targets = []
    for rank in range(2):
        for x, y in eval_batches(data.val, seq_len=32, batch_size=5, rank=rank, world=2):
            targets.append(y.flatten())
    per_shard = sum(len(a) - 1 for a in data.val.arrays())
    assert sum(len(t) for t in targets) == per_shard
    assert sorted(np.concatenate([t.numpy() for t in targets]).tolist()) == \
        sorted(np.concatenate([np.asarray(a[1:]) for a in data.val.arrays()]).tolist())


def test_cli_prepare_runs_on_the_builtin_corpus(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", "builtin:stdlib", "--kind", "char", "--max-bytes", "200000",
                 "--out", str(tmp_path / "tok")]) == 0
    assert main(["prepare", "--input", "builtin:stdlib", "--tokenizer", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "data"), "--max-bytes", "300000", "--val-fraction", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "exact duplicates removed" in out and "train:" in out
    data = TokenData.open(tmp_path / "data")
    assert data.train.tokens > 200_000 and data.val.tokens > 0
