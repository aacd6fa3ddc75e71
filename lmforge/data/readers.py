"""Documents from files: .txt, .jsonl (a text field) and .parquet, plus the built-in corpus.

`iter_documents(specs)` is the single entry point. A spec is a file, a folder (searched
recursively for supported files), a glob pattern, or `builtin:stdlib` (see `builtin.py`).
Everything streams: no reader holds more than one document (or one parquet row group) in memory.

A .txt file is one document unless it contains form feeds (\\f), which then separate documents.
A .jsonl line is one document: the value of `text_field` ("text" by default); lines without it are
counted and reported, not silently dropped.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.builtin import BUILTIN_PREFIX, builtin_files

SUPPORTED_SUFFIXES = (".txt", ".md", ".rst", ".py", ".jsonl", ".parquet")


@dataclass
class ReadStats:
    """What the readers saw; shown to the user after preparing data."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def expand_inputs(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by specs, in a deterministic order, each once; clear errors for empty specs."""
    files: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        text = str(spec)
        if text.startswith(BUILTIN_PREFIX):
            found = builtin_files(text)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
        elif Path(text).is_file():
            found = [Path(text)]
        else:
            raise FileNotFoundError(f"input {text!r} is not a file, a folder, a glob that matches files, or {BUILTIN_PREFIX}stdlib")
        if not found:
            raise FileNotFoundError(f"input {text!r} matched no supported files ({', '.join(SUPPORTED_SUFFIXES)})")
        for path in found:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def read_txt(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    yield from (part for part in text.split("\f")) if "\f" in text else (text,)


def parse_json_object(text: str, where: str, expected: str = "a JSON object") -> dict:
    """One JSONL line as a dict; a ValueError naming `where` (file:line) otherwise."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected {expected}, got {type(record).__name__}")
    return record


def jsonl_objects(path: str | os.PathLike, expected: str = "a JSON object",
                  max_line_bytes: int = 16 << 20) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; a line that is too long, not
    UTF-8, not JSON or not an object raises a ValueError naming path:line (`expected` says what the
    line should have been)."""
    path = Path(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            if len(raw) > max_line_bytes:
                raise ValueError(f"{where}: line is longer than {max_line_bytes >> 20} MiB")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{where}: not UTF-8 ({error.reason} at byte {error.start})") from None
            if text.strip():
                yield number, parse_json_object(text, where, expected)


def read_jsonl(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                stats.skip(f"{path.name}: invalid JSON line")
                continue
            value = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                stats.skip(f"{path.name}: no string field {text_field!r}")
                continue
            yield value


def read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)})")
    for group in range(parquet.num_row_groups):
        column = parquet.read_row_group(group, columns=[text_field]).column(0)
        for value in column.to_pylist():
            if isinstance(value, str):
                yield value


def iter_documents(specs: Iterable[str | os.PathLike], text_field: str = "text",
                   stats: ReadStats | None = None, max_bytes: int | None = None) -> Iterator[str]:
    """Every document of every input, in order; stops after about `max_bytes` of text if given."""
    stats = stats if stats is not None else ReadStats()
    for path in expand_inputs(specs):
        stats.files += 1
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            documents = read_jsonl(path, text_field, stats)
        elif suffix == ".parquet":
            documents = read_parquet(path, text_field)
        else:
            documents = read_txt(path)
        for document in documents:
            if not document.strip():
                stats.skip("empty document")
                continue
            stats.documents += 1
            stats.bytes += len(document.encode("utf-8"))
            yield document
            if max_bytes is not None and stats.bytes >= max_bytes:
                return
