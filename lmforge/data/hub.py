"""Models and data sets by Hugging Face repository id, the way users already have them: the hub cache.

`hub_snapshot("org/name")` is the local folder of a repository in huggingface_hub's cache
(`HF_HUB_CACHE`, by default ~/.cache/huggingface/hub), the same cache that `hf download`,
`transformers` and `datasets` fill. A cached copy is used as it is, without touching the network;
only a repository that is not cached is downloaded, and never when `HF_HUB_OFFLINE=1`. A repository
that is neither cached nor downloadable is one FileNotFoundError line naming the command that
fetches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

RepoType = Literal["model", "dataset"]

# owner/name as the hub spells them: letters, digits, '-', '_', '.'; no leading '.', no '..'.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

__all__ = ["fetch_command", "hub_files", "hub_snapshot", "is_repo_id", "read_parquet_records"]


def is_repo_id(text: str) -> bool:
    """Whether `text` is spelled like a hub repository id ("owner/name")."""
    return _REPO_ID.fullmatch(text) is not None and ".." not in text


def fetch_command(repo_id: str, repo_type: RepoType = "model") -> str:
    """The shell command that puts `repo_id` into the cache (`hf` comes with huggingface_hub)."""
    return f"hf download {repo_id}" + (" --repo-type dataset" if repo_type == "dataset" else "")


def hub_snapshot(repo_id: str, repo_type: RepoType = "model", need: Sequence[str] = (),
                 allow_patterns: Sequence[str] | None = None, hint: str = "") -> Path:
    """The snapshot folder of `repo_id` (its `main` revision): cached, else downloaded when online.

    `need` are globs (relative to the repository root) that must each match a file: a cached copy
    without them counts as missing. `allow_patterns` limits a download to the files lmforge reads;
    `hint` ends the error line (another way to provide the files, e.g. a flag).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face repository id (owner/name)")
    patterns = list(allow_patterns) if allow_patterns is not None else None

    def lacking(folder: Path) -> list[str]:
        return [glob for glob in need if not any(path.is_file() for path in folder.glob(glob))]

    try:
        folder = Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns, local_files_only=True))
        if not lacking(folder):
            return folder
        missing = f"{repo_type} {repo_id!r} in the Hugging Face cache ({folder}) has no {', '.join(lacking(folder))}"
    except LocalEntryNotFoundError:
        missing = f"{repo_type} {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    fetch = f"fetch it with: {fetch_command(repo_id, repo_type)}" + (f" {hint}" if hint else "")
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{missing} and HF_HUB_OFFLINE is set; {fetch}")
    try:
        folder = Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns))
    except Exception as error:  # no network, no such repository, a gated one, a full disk...
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise FileNotFoundError(f"{missing} and could not be downloaded ({type(error).__name__}: {reason}); "
                                f"{fetch}") from None
    if lacking(folder):
        raise FileNotFoundError(f"{repo_type} {repo_id!r} has no {', '.join(lacking(folder))} on the hub")
    return folder


def hub_files(repo_id: str, pattern: str, repo_type: RepoType = "dataset", hint: str = "") -> list[Path]:
    """The files of `repo_id` matching the glob `pattern` (relative to the repository root), sorted."""
    folder = hub_snapshot(repo_id, repo_type, need=[pattern], allow_patterns=[pattern], hint=hint)
    return sorted(path for path in folder.glob(pattern) if path.is_file())


def read_parquet_records(path: Path) -> list[dict[str, Any]]:
    """Every row of a parquet file as a dict (nested structs become dicts, lists stay lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable parquet file ({error})") from None
