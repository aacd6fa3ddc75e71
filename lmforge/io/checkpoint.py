"""Training checkpoints: Hugging Face folders plus resume state, written atomically.

Layout under a run's checkpoint root:
    step_00000500/          one complete checkpoint
        config.json, model.safetensors, tokenizer.json, ...   (`save_pretrained`: loadable by
                                                                lmforge and by `transformers`;
                                                                an LSTM's: io/hf_seq2seq.py)
        train_state.pt      optimizer, schedule position, data-loader position, RNG states;
                            plain tensors and containers only, loaded with weights_only=True
        meta.json           step, tokens, losses, run config (human-readable)
    latest -> step_00000500 symlink to the newest complete checkpoint

A checkpoint is built in a hidden temporary folder, flushed to disk, and only then renamed to its
final name; `latest` is switched by an atomic symlink replace. A crash, a full disk or a read-only
folder therefore never leaves half a checkpoint behind and never touches the previous good one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmforge.io.hf import load_pretrained, save_pretrained
from lmforge.io.hf_seq2seq import load_lstm, write_hf_files
from lmforge.model.lstm import LSTMLanguageModel
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

STEP_PREFIX = "step_"
LATEST = "latest"
TRAIN_STATE = "train_state.pt"
META = "meta.json"
REQUIRED_FILES = ("config.json", "model.safetensors", TRAIN_STATE, META)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what was kept."""


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_FILES)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and not p.is_symlink() and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint: `latest` if it points at one, else the highest step folder."""
    root = Path(root)
    link = root / LATEST
    if link.is_symlink() and is_complete(link.resolve()):
        return link.resolve()
    found = list_checkpoints(root)
    return found[-1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(root: str | os.PathLike, step: int, model: Transformer | LSTMLanguageModel, tokenizer: Tokenizer | None,
                    train_state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    previous = latest_checkpoint(root) if root.is_dir() else None
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if isinstance(model, LSTMLanguageModel):  # model_type lmforge-lstm (io/hf_seq2seq.py)
            write_hf_files(model, tokenizer, tmp)
        else:
            save_pretrained(model, tokenizer, tmp)
        torch.save(train_state, tmp / TRAIN_STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
            aside = root / f".{final.name}.old-{os.getpid()}"
            os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        link_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(final.name, link_tmp)
        os.replace(link_tmp, root / LATEST)
        _fsync_dir(root)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the last good checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
        reason = error.strerror or str(error)
        raise CheckpointError(f"could not write checkpoint {final}: {reason} ({type(error).__name__}); {kept}") from error
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_train_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The resume state of a checkpoint, unpickled safely (tensors and plain containers only)."""
    path = Path(folder) / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {TRAIN_STATE}: not a resumable checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise CheckpointError(f"{path}: unreadable resume state ({error})") from error


def load_meta(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(folder) / META).read_text())


def load_weights_into(model: Transformer | LSTMLanguageModel, folder: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into an existing model of the same configuration."""
    if isinstance(model, LSTMLanguageModel):
        loaded = load_lstm(folder, dtype=next(model.parameters()).dtype)
    else:
        loaded, _ = load_pretrained(folder, dtype=None)
    if loaded.config != model.config:
        raise CheckpointError(f"{folder} holds a different model configuration than this run "
                              f"({loaded.config} vs {model.config})")
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict())
