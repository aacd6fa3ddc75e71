"""Atomic writes: a reader (or a crash) sees the old file or folder, or the new one, never half of one.

Everything is first written beside its destination, then renamed over it with `os.replace`,
which is atomic on POSIX when both names are on one filesystem (hence "beside", not /tmp).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_atomically", "write_folder_atomically", "write_text_atomically"]


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a hidden file beside `path` (same suffix, so format-by-extension works),
    then rename it over `path`. On any error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh hidden folder beside `folder`, then rename it into place.

    An existing `folder` is replaced only once the new one is complete; on any error the
    temporary folder is removed and `folder` is left as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if folder.exists():
            aside = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, aside)
            os.replace(tmp, folder)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
