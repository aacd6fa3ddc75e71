"""`lmforge models`: the named models and whether they are installed, then what each model family
supports (Hugging Face folders, GGUF files, training, LoRA targets, export), read from the loaders'
own tables so the list cannot drift from the code."""

from __future__ import annotations

import argparse

import torch

from lmforge.core.config import FAMILIES, ModelConfig
from lmforge.io.gguf_validate import ARCHITECTURES, LLAMA_ARCHITECTURES
from lmforge.io.hf import MODEL_TYPES
from lmforge.io.registry import NAMED_MODELS, named_model_path
from lmforge.model.lora import ALL_LINEAR, resolve_targets
from lmforge.model.transformer import Transformer

GGUF_EXPORT = ("llama", "gpt2")  # lmforge.io.gguf_writer's architectures
VOCABULARIES = ("GGUF vocabularies: tokenizer.ggml.model 'gpt2' (byte-level BPE with a pre-tokenizer llama.cpp "
                "names) and 'llama' (SentencePiece BPE with byte fallback: Llama 2, Mistral, TinyLlama); "
                "Hugging Face folders: any tokenizer.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list named models and what each model family supports",
        description="List the named models (and where they are installed), then per model family: the Hugging "
                    "Face model_type values and GGUF architectures that load, the training it takes, its LoRA "
                    "target layers and its export formats. Anything not listed is refused when loaded, with an "
                    "error naming the architecture or vocabulary.")
    parser.set_defaults(func=run)


def lora_targets(family: str) -> list[str]:
    """The linear layers `all-linear` wraps in a model of `family` (built on the meta device)."""
    config = ModelConfig(family=family, vocab_size=8, dim=8, n_layers=1, n_heads=2, max_seq_len=8)
    with torch.device("meta"):
        model = Transformer(config)
    return sorted({name.rsplit(".", 1)[-1] for name in resolve_targets(model, ALL_LINEAR)})


def family_support() -> list[dict[str, str]]:
    """One row per family: what loads, trains and exports."""
    rows = []
    for family in FAMILIES:
        hf_types = [t for t, f in MODEL_TYPES.items() if f == family]
        gguf_archs = [a for a in ARCHITECTURES if (a in LLAMA_ARCHITECTURES and family == "llama") or a == family]
        training = "pretrain, finetune (full, LoRA), dpo, rm, rl" if family in ("llama", "gpt2") else "finetune (full, LoRA)"
        export = "Hugging Face folder" + (", GGUF" if family in GGUF_EXPORT else "")
        rows.append({"family": family, "hf": ", ".join(hf_types), "gguf": ", ".join(gguf_archs), "training": training,
                     "lora": " ".join(lora_targets(family)), "export": export})
    return rows


def run(args: argparse.Namespace) -> int:
    for name, entry in sorted(NAMED_MODELS.items()):
        try:
            where = str(named_model_path(name))
        except FileNotFoundError:
            where = f"not installed: {entry.install}"
        print(f"{name}\n  {entry.description}\n  {where}")
    print("\nmodel families:")
    for row in family_support():
        print(f"{row['family']}\n  Hugging Face model_type: {row['hf']}\n  GGUF architecture: {row['gguf']}\n"
              f"  training: {row['training']}\n  LoRA targets (all-linear): {row['lora']}\n  export: {row['export']}")
    print(f"\n{VOCABULARIES}")
    return 0
