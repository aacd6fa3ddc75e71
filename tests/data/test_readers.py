"""Readers: txt, jsonl, parquet, folders, globs and the built-in standard-library corpus."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data.builtin import builtin_files
from lmforge.data.clean import Deduplicator, clean_text
from lmforge.data.readers import ReadStats, expand_inputs, iter_documents


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first document\fsecond document\f  \n")
    lines = [json.dumps({"text": "json one"}), "not json", json.dumps({"body": "no text field"}), json.dumps({"text": "json two"})]
    (root / "sub" / "b.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"], "id": [1, 2]}), root / "sub" / "c.parquet")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


def test_folder_reads_every_supported_format_and_reports_skips(tmp_path):
    root = _corpus(tmp_path)
    stats = ReadStats()
    documents = list(iter_documents([root], stats=stats))
    assert documents == ["first document", "second document", "json one", "json two", "parquet one", "parquet two"]
    assert stats.files == 3 and stats.documents == 6
    assert stats.skipped == {"empty document": 1, "b.jsonl: invalid JSON line": 1, "b.jsonl: no string field 'text'": 1}


def test_glob_and_files_are_deduplicated_in_order(tmp_path):
    root = _corpus(tmp_path)
    files = expand_inputs([str(root / "**" / "*.jsonl"), root / "sub" / "b.jsonl", root / "a.txt"])
    assert [f.name for f in files] == ["b.jsonl", "a.txt"]


def test_parquet_text_field_and_missing_column(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["x", "y"]}), path)
    assert list(iter_documents([path], text_field="content")) == ["x", "y"]
    with pytest.raises(ValueError, match="no column 'text'"):
        list(iter_documents([path]))


def test_missing_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        expand_inputs([tmp_path / "nope.txt"])
    with pytest.raises(FileNotFoundError, match="matched no supported files"):
        expand_inputs([str(tmp_path / "*.txt")])
    with pytest.raises(FileNotFoundError, match="unknown built-in corpus"):
        expand_inputs(["builtin:nothing"])


def test_max_bytes_stops_early(tmp_path):
    (tmp_path / "x.txt").write_text("a" * 100 + "\f" + "b" * 100 + "\f" + "c" * 100)
    assert len(list(iter_documents([tmp_path / "x.txt"], max_bytes=150))) == 2


def test_builtin_stdlib_corpus_is_the_running_pythons_sources():
    files = builtin_files("builtin:stdlib")
    root = Path(sysconfig.get_paths()["stdlib"])
    names = {str(f.relative_to(root)) for f in files}
    assert "json/__init__.py" in names and "pydoc_data/topics.py" in names
    assert not any(part in ("test", "tests", "site-packages") for f in files for part in f.relative_to(root).parts)
    assert files == sorted(files)
    assert sum(f.stat().st_size for f in files) > 5_000_000


def test_clean_and_dedup():
    assert clean_text("a\r\nb\rc\x00d  \n") == "a\nb\ncd  \n"
    dedup = Deduplicator()
    assert [dedup.is_new(t) for t in ("x", "y", "x", "x")] == [True, True, False, False]
    assert dedup.duplicates == 2
