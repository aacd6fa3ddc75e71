"""A corpus that exists on every machine without downloads: the running Python's standard library.

`builtin:stdlib` names the source files (code, docstrings and comments) of the standard library of
the interpreter that runs lmforge, test suites and vendored packages left out, in a fixed order
(about 10 MB of text for CPython 3.11). It also includes `pydoc_data/topics.py`, the text of the
language reference that `help()` shows. Same Python version -> same corpus, byte for byte.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
BUILTIN_CORPORA = ("stdlib",)
# Left out: tests, third-party packages, and generated tables (the codec tables under encodings/
# are megabytes of hex numbers that would teach a small model little but mapping tables).
_EXCLUDED_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3", "ensurepip",
                   "encodings"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def builtin_files(spec: str) -> list[Path]:
    """Files of a built-in corpus, for a spec like 'builtin:stdlib'."""
    name = spec[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_CORPORA:
        raise FileNotFoundError(f"unknown built-in corpus {spec!r}; available: "
                                + ", ".join(BUILTIN_PREFIX + c for c in BUILTIN_CORPORA))
    root = stdlib_root()
    files = sorted(
        path for path in root.rglob("*.py")
        if not _EXCLUDED_PARTS.intersection(path.relative_to(root).parts[:-1]) and not path.name.startswith("test_")
    )
    if not files:
        raise FileNotFoundError(f"found no standard-library sources under {root}")
    return files
