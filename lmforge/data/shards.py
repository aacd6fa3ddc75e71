"""Token shards: flat uint16/uint32 files, written streaming and read memory-mapped.

A prepared data folder holds
    meta.json              dtype, vocabulary size, boundary token, per-split shard lists and counts
    train_00000.bin ...    raw little-endian token ids, at most `shard_tokens` each
    val_00000.bin ...
    token_bytes.npy        UTF-8 bytes each token id stands for (0 for special tokens): bits per byte
    tokenizer/             the tokenizer the ids belong to
Raw files keep readers trivial (np.memmap) and let corpora larger than RAM through: nothing ever
holds more than one document's ids plus the write buffer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META_FILE = "meta.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per uint16 shard


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token ids to `<prefix>_NNNNN.bin` files, starting a new file every `shard_tokens`."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS) -> None:
        if shard_tokens <= 0:
            raise ValueError("shard_tokens must be positive")
        self.folder, self.prefix, self.dtype, self.shard_tokens = Path(folder), prefix, np.dtype(dtype), shard_tokens
        self.shards: list[str] = []
        self.lengths: list[int] = []
        self.tokens = 0
        self._handle = None

    def _open_next(self) -> None:
        self.close()
        name = f"{self.prefix}_{len(self.shards):05d}.bin"
        self._handle = open(self.folder / name, "wb")
        self.shards.append(name)
        self.lengths.append(0)

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        if ids.size and int(ids.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype}")
        ids = ids.astype(self.dtype, copy=False)
        while ids.size:
            if self._handle is None or self.lengths[-1] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.lengths[-1]
            part, ids = ids[:room], ids[room:]
            self._handle.write(part.tobytes())
            self.lengths[-1] += part.size
            self.tokens += part.size

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None


def move_tail(train: ShardWriter, val: ShardWriter, count: int, chunk: int = 1 << 24) -> None:
    """Move the last `count` tokens of the closed `train` shards to the start of `val`, streaming."""
    train.close()
    if count <= 0:
        return
    keep = train.tokens - count
    offset = 0
    for index, (name, length) in enumerate(zip(train.shards, train.lengths)):
        if offset + length > keep:
            break
        offset += length
    first_cut = keep - offset  # tokens kept in shard `index`
    for name, length in list(zip(train.shards, train.lengths))[index:]:
        data = np.memmap(train.folder / name, dtype=train.dtype, mode="r", shape=(length,))
        start = first_cut if name == train.shards[index] else 0
        for begin in range(start, length, chunk):
            val.write(np.array(data[begin:begin + chunk]))
        del data
    for name in train.shards[index + 1:]:
        (train.folder / name).unlink()
    with open(train.folder / train.shards[index], "r+b") as handle:
        handle.truncate(first_cut * train.dtype.itemsize)
    train.shards, train.lengths = train.shards[:index + 1], train.lengths[:index] + [first_cut]
    if first_cut == 0:
        (train.folder / train.shards[index]).unlink()
        train.shards, train.lengths = train.shards[:index], train.lengths[:index]
    train.tokens = keep


@dataclass(frozen=True)
class Split:
    """One split (train or val) of a prepared folder: memory-mapped shards."""

    folder: Path
    name: str
    dtype: np.dtype
    shards: tuple[str, ...]
    lengths: tuple[int, ...]
    bytes: int  # UTF-8 bytes of the text behind these tokens

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def arrays(self) -> list[np.ndarray]:
        return [np.memmap(self.folder / name, dtype=self.dtype, mode="r", shape=(length,))
                for name, length in zip(self.shards, self.lengths) if length]


@dataclass(frozen=True)
class TokenData:
    """A prepared data folder, validated."""

    folder: Path
    vocab_size: int
    boundary_id: int
    train: Split
    val: Split
    meta: dict

    @property
    def tokenizer_folder(self) -> Path:
        return self.folder / "tokenizer"

    def token_bytes(self) -> np.ndarray:
        return np.load(self.folder / "token_bytes.npy")

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "TokenData":
        folder = Path(folder)
        path = folder / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a prepared data folder (no {META_FILE}); run `lmforge prepare` first")
        meta = json.loads(path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
        dtype = np.dtype(meta["dtype"])
        splits = {}
        for name in ("train", "val"):
            info = meta["splits"][name]
            for shard, length in zip(info["shards"], info["lengths"]):
                file = folder / shard
                if not file.is_file() or file.stat().st_size != length * dtype.itemsize:
                    raise ValueError(f"{file}: missing or not {length} tokens long (meta.json and shards disagree)")
            splits[name] = Split(folder, name, dtype, tuple(info["shards"]), tuple(info["lengths"]), int(info["bytes"]))
        return cls(folder, int(meta["vocab_size"]), int(meta["boundary_id"]), splits["train"], splits["val"], meta)
