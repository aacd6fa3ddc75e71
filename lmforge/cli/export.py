"""`lmforge export`: write a model (optionally with a LoRA adapter merged in) as a Hugging Face
folder or a GGUF file.

    lmforge export --model runs/ft/latest --to hf --out exported/
    lmforge export --model smollm2-135m-instruct --adapter runs/ft/adapter --to gguf --type q8_0 --out ft.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model to a Hugging Face folder or a GGUF file")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="known name, GGUF file, model folder or Hugging Face repository id")
    parser.add_argument("--adapter", help="PEFT/LoRA adapter folder to merge into the model first (default: none)")
    parser.add_argument("--to", required=True, choices=("hf", "gguf"), dest="target",
                        help="hf: a Hugging Face folder (config.json, model.safetensors, tokenizer); gguf: one GGUF file")
    parser.add_argument("--out", required=True, help="output folder (hf) or file (gguf)")
    parser.add_argument("--type", default="f16", choices=("f32", "f16", "q8_0"), help="GGUF tensor type (default f16)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weight dtype of a Hugging Face export (default float32)")
    parser.add_argument("--name", help="general.name written into a GGUF file (default: 'lmforge', the family and the parameter count)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lmforge.core.device import parse_dtype
    from lmforge.io.hf import hf_incompatibilities, save_pretrained
    from lmforge.core.files import write_folder_atomically
    from lmforge.io.peft import load_adapter
    from lmforge.io.registry import load_model
    from lmforge.model.lora import merge_lora

    model, tokenizer = load_model(args.model, dtype=torch.float32, device="cpu")
    if args.adapter:
        names = load_adapter(model, args.adapter)
        merge_lora(model)
        print(f"merged the adapter {args.adapter} into {len(names)} layers")
    out = Path(args.out)
    if args.target == "hf":
        problems = hf_incompatibilities(model.config)
        if problems:
            raise ValueError(f"Hugging Face's classes cannot represent {', '.join(problems)}; export refused")
        model = model.to(parse_dtype(args.dtype))

        def write(folder: Path) -> None:
            save_pretrained(model, tokenizer, folder)
            if tokenizer.chat_template:  # newer transformers read the template from its own file
                (folder / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")

        write_folder_atomically(out, write)
        print(f"wrote Hugging Face folder {out}")
    else:
        from lmforge.io.gguf_writer import save_gguf

        save_gguf(model, tokenizer, out, qtype=args.type, name=args.name)
        print(f"wrote {args.type} GGUF {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
