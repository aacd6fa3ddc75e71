"""Repositories by id from a Hugging Face hub cache that the test builds (no network)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data.hub import fetch_command, hub_files, hub_snapshot, is_repo_id, read_parquet_records


@pytest.mark.parametrize("text, expected", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
    ("allenai/ai2_arc", True),
    ("openai/gsm8k", True),
    ("smollm2-135m-instruct", False),  # a known name, no owner
    ("runs/stdlib/latest", False),  # a path
    ("./model", False),
    ("../shared", False),
    ("/abs/path", False),
    ("a/..b", False),
])
def test_repo_ids_are_told_from_paths(text, expected):
    assert is_repo_id(text) is expected


def test_a_cached_repository_is_found_offline_in_the_layout_huggingface_hub_reads(hub_cache):
    from huggingface_hub import scan_cache_dir

    snapshot = hub_cache.add("owner/data", {"sub/train-00000-of-00001.parquet": b"x", "README.md": b"# card"},
                             repo_type="dataset")
    assert hub_snapshot("owner/data", "dataset", need=["sub/train-*.parquet"]) == snapshot
    assert hub_files("owner/data", "sub/train-*.parquet") == [snapshot / "sub" / "train-00000-of-00001.parquet"]
    # huggingface_hub's own cache scanner sees the same repository, revision and files.
    info = scan_cache_dir(hub_cache.root)
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type, set(repo.refs)) == ("owner/data", "dataset", {"main"})
    (revision,) = repo.revisions
    assert revision.snapshot_path == snapshot and len(revision.files) == 2


def test_a_repository_that_is_not_cached_is_one_line_naming_the_command(hub_cache):
    with pytest.raises(FileNotFoundError) as error:
        hub_snapshot("owner/absent", "dataset", hint="(or pass --data DIR)")
    message = str(error.value)
    assert "\n" not in message and "is not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert message.endswith("fetch it with: hf download owner/absent --repo-type dataset (or pass --data DIR)")
    assert fetch_command("owner/m") == "hf download owner/m"


def test_a_cached_repository_without_the_needed_files_counts_as_missing(hub_cache):
    hub_cache.add("owner/model", {"config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match=r"has no \*\.safetensors, tokenizer\.json and HF_HUB_OFFLINE"):
        hub_snapshot("owner/model", need=["config.json", "*.safetensors", "tokenizer.json"])
    with pytest.raises(ValueError, match="not a Hugging Face repository id"):
        hub_snapshot("not-a-repo")


def test_when_online_a_missing_repository_is_downloaded_and_a_failed_download_is_one_line(hub_cache, monkeypatch):
    """The download path, pointed at a closed port on this machine: the failure is reported, not raised raw."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(FileNotFoundError) as error:
        hub_snapshot("owner/absent")
    message = str(error.value)
    assert "\n" not in message and "could not be downloaded" in message
    assert message.endswith("fetch it with: hf download owner/absent")


def test_parquet_records_keep_nested_fields(tmp_path):
    path = tmp_path / "rows.parquet"
    rows = [{"question": "q1", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"},
            {"question": "q2", "choices": {"text": ["c", "d", "e"], "label": ["1", "2", "3"]}, "answerKey": "1"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert read_parquet_records(path) == rows
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="bad.parquet: not a readable parquet file"):
        read_parquet_records(bad)
