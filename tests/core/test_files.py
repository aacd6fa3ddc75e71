"""Atomic writes keep the old content when writing fails and leave no temporary files behind."""

from pathlib import Path

import pytest

from lmforge.core.files import replace_atomically, write_folder_atomically, write_text_atomically


def _visible_and_hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "deep" / "results.json"
    write_text_atomically(target, "first")
    write_text_atomically(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert _visible_and_hidden(target.parent) == ["results.json"]


def test_failed_file_write_keeps_old_content(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")

    def half_write(tmp: Path) -> None:
        assert tmp.suffix == ".png"  # writers that pick a format from the suffix still work
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, half_write)
    assert target.read_bytes() == b"old"
    assert _visible_and_hidden(tmp_path) == ["plot.png"]


def test_failed_folder_write_keeps_old_folder(tmp_path):
    folder = tmp_path / "adapter"
    write_folder_atomically(folder, lambda tmp: (tmp / "a.txt").write_text("v1"))

    def fail(tmp: Path) -> None:
        (tmp / "a.txt").write_text("v2, incomplete")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_folder_atomically(folder, fail)
    assert (folder / "a.txt").read_text() == "v1"
    assert _visible_and_hidden(tmp_path) == ["adapter"]
    write_folder_atomically(folder, lambda tmp: (tmp / "b.txt").write_text("v3"))
    assert _visible_and_hidden(folder) == ["b.txt"]
