"""Atomic checkpoints: complete or absent, `latest` switching, pruning, disk-full and read-only."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.io import checkpoint as ckpt
from lmforge.io.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_train_state,
    load_weights_into,
    save_checkpoint,
)
from lmforge.model.transformer import Transformer, init_weights


def _model(family="llama", seed=0) -> Transformer:
    config = ModelConfig(family=family, vocab_size=40, dim=16, n_layers=1, n_heads=2, max_seq_len=16, tie_embeddings=False)
    model = Transformer(config)
    init_weights(model, seed=seed)
    return model


def _state(step):
    return {"step": step, "optimizer": {"m": torch.randn(3)}, "loader": {"epoch": 1, "position": 7},
            "rng": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)}}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_load_round_trip_and_latest(tmp_path, family):
    model = _model(family)
    path = save_checkpoint(tmp_path, 5, model, None, _state(5), {"step": 5})
    assert path.name == "step_00000005" and latest_checkpoint(tmp_path) == path
    assert (tmp_path / "latest").is_symlink()
    assert set(p.name for p in path.iterdir()) >= {"config.json", "model.safetensors", "train_state.pt", "meta.json"}
    state = load_train_state(path)
    assert state["step"] == 5 and state["loader"] == {"epoch": 1, "position": 7}
    other = _model(family, seed=1)
    load_weights_into(other, path)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert a.equal(b), name


def test_keeps_newest_and_ignores_incomplete_folders(tmp_path):
    model = _model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, None, _state(step), {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    (tmp_path / "step_00000009").mkdir()  # a stray half folder is never taken for a checkpoint
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000003"


def test_disk_full_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    model = _model()
    good = save_checkpoint(tmp_path, 1, model, None, _state(1), {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"No space left on device.*last good checkpoint .*step_00000001 is kept"):
        save_checkpoint(tmp_path, 2, model, None, _state(2), {"step": 2})
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]  # no temp folder left


def test_read_only_folder_fails_clearly(tmp_path, monkeypatch):
    model = _model()
    real_mkdir = type(tmp_path).mkdir

    def read_only(self, *args, **kwargs):
        if self.name.startswith(".step_"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    with pytest.raises(CheckpointError, match="Read-only file system.*no earlier checkpoint exists"):
        save_checkpoint(tmp_path / "run", 1, model, None, _state(1), {"step": 1})


def test_resume_state_refuses_pickled_code(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path, 1, model, None, _state(1), {"step": 1})

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"step": 1, "payload": Evil()}, path / "train_state.pt")
    with pytest.raises(CheckpointError, match="unreadable resume state"):
        load_train_state(path)


def test_same_step_saved_twice_replaces_atomically(tmp_path):
    model = _model()
    save_checkpoint(tmp_path, 4, model, None, _state(4), {"step": 4, "v": 1})
    save_checkpoint(tmp_path, 4, model, None, _state(4), {"step": 4, "v": 2})
    assert json.loads((latest_checkpoint(tmp_path) / "meta.json").read_text())["v"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
