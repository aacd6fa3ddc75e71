"""`--model` values: named models, local files and folders, and Hugging Face repository ids served
from a hub cache the test builds (offline; no test downloads)."""

from __future__ import annotations

import pytest
import torch

from lmforge.io.hf import load_pretrained
from lmforge.io.registry import DEFAULT_MODEL, load_model, named_model_path, resolve_model

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the id users know; the cached content is a tiny stand-in


def _cache_folder(hub_cache, repo_id, folder):
    return hub_cache.add(repo_id, {path.name: path for path in folder.iterdir() if path.is_file()})


def test_a_repo_id_loads_from_the_hub_cache(hub_cache, tiny_hf_folder):
    snapshot = _cache_folder(hub_cache, REPO, tiny_hf_folder)
    assert resolve_model(REPO) == snapshot
    model, tokenizer = load_model(REPO)
    reference, reference_tokenizer = load_pretrained(tiny_hf_folder)
    ids = torch.tensor([reference_tokenizer.encode("The capital of France is")])
    assert tokenizer.encode("The capital of France is") == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids), reference(ids))
    assert tokenizer.chat_template == reference_tokenizer.chat_template and tokenizer.chat_template


def test_a_repo_id_that_is_not_cached_is_one_clear_line(hub_cache):
    with pytest.raises(FileNotFoundError) as error:
        resolve_model("someone/not-cached")
    message = str(error.value)
    assert "\n" not in message and "not in the Hugging Face cache" in message
    assert "hf download someone/not-cached" in message and "local file or folder" in message


def test_a_cached_repo_without_safetensors_weights_is_refused_clearly(hub_cache, tiny_hf_folder):
    hub_cache.add("someone/bin-only", {"config.json": tiny_hf_folder / "config.json",
                                       "tokenizer.json": tiny_hf_folder / "tokenizer.json",
                                       "pytorch_model.bin": b"pickled weights are never read"})
    with pytest.raises(FileNotFoundError, match=r"has no \*\.safetensors"):
        load_model("someone/bin-only")


def test_an_existing_local_folder_wins_over_a_repo_id(hub_cache, tiny_hf_folder, tmp_path, monkeypatch):
    local = tmp_path / "owner" / "model"
    local.mkdir(parents=True)
    for path in tiny_hf_folder.iterdir():
        (local / path.name).write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("owner/model") == local.relative_to(tmp_path)  # not looked up in the (empty) cache
    assert load_model("owner/model")[0].config.dim == 32


def test_the_builtin_default_never_touches_the_hub(hub_cache, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the named model must not go through huggingface_hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    assert resolve_model(DEFAULT_MODEL) == named_model_path(DEFAULT_MODEL)
    assert resolve_model(DEFAULT_MODEL.upper()) == named_model_path(DEFAULT_MODEL)


def test_unknown_names_and_paths_are_one_clear_line():
    with pytest.raises(FileNotFoundError, match="neither a known name .* nor a Hugging Face repository id"):
        resolve_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve_model("runs/none/latest")
