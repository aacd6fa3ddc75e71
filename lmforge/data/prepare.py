"""Text files -> cleaned, deduplicated documents -> token shards with a train/val split.

The pipeline streams: documents are read, cleaned, deduplicated, encoded in batches and appended
to the shard writers. Each document is preceded by the boundary token, so a model sees where
documents start and a sampler can begin from it. The output folder is built under a temporary name
and renamed at the end: an interrupted run never leaves a half-written data folder behind.

Split modes:
  "hash": a document goes to val when a hash of its text falls under `val_fraction`; stable
          whatever the order or number of files (good for real corpora).
  "tail": the last `val_fraction` of the token stream is val (the Tiny Shakespeare convention:
          first 90% train, last 10% val). "hash" falls back to it when no document landed in val.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from lmforge.data.clean import Deduplicator, clean_text
from lmforge.data.readers import ReadStats, expand_inputs, iter_documents
from lmforge.data.shards import DEFAULT_SHARD_TOKENS, FORMAT_VERSION, META_FILE, ShardWriter, TokenData, move_tail, token_dtype

EncodeBatch = Callable[[list[str]], list[list[int]]]
T = TypeVar("T")


@dataclass(frozen=True)
class PrepareOptions:
    val_fraction: float = 0.01
    split: str = "hash"  # "hash" or "tail"
    text_field: str = "text"
    dedup: bool = True
    max_bytes: int | None = None
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    batch_documents: int = 256

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.split not in ("hash", "tail"):
            raise ValueError(f"split must be 'hash' or 'tail', got {self.split!r}")


def input_bytes(inputs: Iterable[str]) -> int:
    """Total size of the input files (the progress bar's 100%)."""
    return sum(path.stat().st_size for path in expand_inputs(inputs))


def _is_val(text: str, fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _batches(documents: Iterator[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_corpus(
    inputs: list[str],
    out: str | os.PathLike,
    *,
    encode_batch: EncodeBatch,
    vocab_size: int,
    boundary_id: int,
    token_bytes: np.ndarray,
    tokenizer_folder: str | os.PathLike,
    options: PrepareOptions = PrepareOptions(),
    on_progress: Callable[[int], None] | None = None,  # called with input bytes consumed so far
    plant: Callable[[Iterator[str], Callable[[], int]], Iterator[tuple[str, bool]]] | None = None,
    scrub: Callable[[str], str] | None = None,
    extra_meta: Callable[[], dict] | None = None,
) -> TokenData:
    """`plant` (data.canaries.CanaryPlanter) adds documents to the deduplicated stream, each as
    (text, train_only); `scrub` (data.pii.PiiScrubber) rewrites every document after that, canaries
    included; `extra_meta()` adds keys to meta.json once the stream is done."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        dtype = token_dtype(vocab_size)
        writers = {name: ShardWriter(tmp, name, dtype, options.shard_tokens) for name in ("train", "val")}
        counts = {name: {"documents": 0, "bytes": 0} for name in writers}
        stats = ReadStats()
        dedup = Deduplicator()
        started = time.time()
        documents = (clean_text(d) for d in iter_documents(inputs, options.text_field, stats, options.max_bytes))
        unique = (d for d in documents if d and (not options.dedup or dedup.is_new(d)))
        stream = plant(unique, lambda: stats.bytes) if plant is not None else ((d, False) for d in unique)
        if scrub is not None:
            stream = ((scrub(d), train_only) for d, train_only in stream)
        for pairs in _batches(stream, options.batch_documents):
            batch = [d for d, _ in pairs]
            for (text, train_only), ids in zip(pairs, encode_batch(batch)):
                hashed_val = options.split == "hash" and not train_only and _is_val(text, options.val_fraction)
                name = "val" if hashed_val else "train"
                array = np.asarray([boundary_id] + ids, dtype=np.int64)
                writers[name].write(array)
                counts[name]["documents"] += 1
                counts[name]["bytes"] += int(token_bytes[array].sum())
            if on_progress is not None:
                on_progress(stats.bytes)
        train, val = writers["train"], writers["val"]
        train.close()
        val.close()
        if train.tokens == 0 and val.tokens == 0:
            raise ValueError("the inputs contained no text")
        if options.split == "tail" or val.tokens == 0:
            # Keep the first (1 - fraction) of the stream as train, exactly as int() rounds it.
            move_tail(train, val, train.tokens - int(train.tokens * (1.0 - options.val_fraction)))
            val.close()
            moved = sum(int(token_bytes[np.asarray(a, dtype=np.int64)].sum()) for a in _read_all(tmp, val))
            counts["train"]["bytes"] -= moved - counts["val"]["bytes"]
            counts["val"]["bytes"] = moved
        if train.tokens == 0:
            raise ValueError("the train split is empty: too little text or too large val_fraction")
        np.save(tmp / "token_bytes.npy", token_bytes.astype(np.int32))
        shutil.copytree(tokenizer_folder, tmp / "tokenizer")
        meta = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "boundary_id": boundary_id,
            "inputs": [str(i) for i in inputs],
            "split_mode": options.split,
            "val_fraction": options.val_fraction,
            "documents_read": stats.documents,
            "input_bytes": stats.bytes,
            "duplicates_removed": dedup.duplicates,
            "skipped": stats.skipped,
            "seconds": round(time.time() - started, 2),
            "splits": {name: {"shards": w.shards, "lengths": w.lengths, "tokens": w.tokens, **counts[name]}
                       for name, w in writers.items()},
            **(extra_meta() if extra_meta is not None else {}),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenData.open(out)


def _read_all(folder: Path, writer: ShardWriter, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
    for name, length in zip(writer.shards, writer.lengths):
        data = np.memmap(folder / name, dtype=writer.dtype, mode="r", shape=(length,)) if length else np.zeros(0, writer.dtype)
        for begin in range(0, length, chunk):
            yield data[begin:begin + chunk]


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing target is moved aside first and removed after."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
