"""`lmforge models`: the named models and whether they are installed, the architectures (decoder, T5,
BERT, LSTM) with how each is trained, loaded and used, then what each decoder family supports
(Hugging Face folders, GGUF files, training, LoRA targets, export), read from the loaders' own
tables so the list cannot drift from the code."""

from __future__ import annotations

import argparse

import torch

from lmforge.core.config import FAMILIES, ModelConfig
from lmforge.io.gguf_validate import ARCHITECTURES, LLAMA_ARCHITECTURES
from lmforge.io.hf import MODEL_TYPES, OTHER_ARCHITECTURES
from lmforge.io.registry import NAMED_MODELS, named_model_path
from lmforge.model.lora import ALL_LINEAR, resolve_targets
from lmforge.model.transformer import Transformer

GGUF_EXPORT = ("llama", "gpt2")  # lmforge.io.gguf_writer's architectures
VOCABULARIES = ("GGUF vocabularies: tokenizer.ggml.model 'gpt2' (byte-level BPE with a pre-tokenizer llama.cpp "
                "names) and 'llama' (SentencePiece BPE with byte fallback: Llama 2, Mistral, TinyLlama); "
                "Hugging Face folders: any tokenizer.json")


# How each architecture is trained and used (the T5, BERT and LSTM rows take their model_type and
# their advice from io/hf.py's OTHER_ARCHITECTURES, which the decoder verbs quote when given one).
TRAINING = {
    "decoder": "lmforge pretrain --config configs/NAME.yaml; finetune (full, LoRA), dpo, rm, rl",
    "t5": "lmforge t5 (span-corruption pretraining, then seq2seq fine-tuning)",
    "bert": "lmforge bert (masked-LM pretraining 80/10/10, then a classifier head)",
    "lmforge-lstm": "lmforge pretrain --config configs/NAME.yaml architecture=lstm (truncated BPTT, the decoder's "
                    "loop: checkpoints, resume, validation); lmforge compare trains one beside a decoder and a T5",
}
NAMES = {"t5": "T5", "bert": "BERT", "lmforge-lstm": "LSTM"}
LOADS = {
    "t5": "Hugging Face T5ForConditionalGeneration folders (ours and transformers')",
    "bert": "Hugging Face BertForMaskedLM / BertForSequenceClassification folders (ours and transformers')",
    "lmforge-lstm": "lmforge LSTM folders (config.json + model.safetensors; no transformers class exists)",
}


def architecture_rows() -> list[dict[str, str]]:
    """One row per architecture: what it is, its model_type(s), how to train it, what loads, what to use it with."""
    rows = [{"name": "decoder", "what": "decoder-only transformers (the families below)",
             "model_type": ", ".join(MODEL_TYPES), "train": TRAINING["decoder"],
             "loads": "Hugging Face folders, GGUF files, lmforge checkpoints",
             "use": "lmforge generate, chat, serve, eval (any of these takes --model FOLDER_OR_GGUF)"}]
    for model_type, (what, use) in OTHER_ARCHITECTURES.items():
        rows.append({"name": NAMES[model_type], "what": what.split(" ", 1)[1], "model_type": model_type,
                     "train": TRAINING[model_type], "loads": LOADS[model_type], "use": use})
    return rows


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list named models and what each model family supports",
        description="List the named models (and where they are installed), the architectures (decoder, T5, BERT, "
                    "LSTM) with how each is trained, what loads and which commands use it, then per decoder family: "
                    "the Hugging Face model_type values and GGUF architectures that load, the training it takes, its "
                    "LoRA target layers and its export formats. Anything not listed is refused when loaded, with an "
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
    print("\narchitectures:")
    for row in architecture_rows():
        print(f"{row['name']}: {row['what']}\n  model_type: {row['model_type']}\n  train: {row['train']}\n"
              f"  loads: {row['loads']}\n  use: {row['use']}")
    print("\ndecoder families:")
    for row in family_support():
        print(f"{row['family']}\n  Hugging Face model_type: {row['hf']}\n  GGUF architecture: {row['gguf']}\n"
              f"  training: {row['training']}\n  LoRA targets (all-linear): {row['lora']}\n  export: {row['export']}")
    print(f"\n{VOCABULARIES}")
    return 0
