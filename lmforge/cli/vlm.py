"""`lmforge vlm {data,train,eval}`: vision + language on generated shape pictures, and the
`lmforge chat --image` path (`image_chat`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lmforge.cli.recipes import apply_overrides, read_recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("vlm", help="vision + language: shape-picture data, LLaVA-style training, evaluation")
    verbs = parser.add_subparsers(dest="vlm_command", metavar="VLM_COMMAND", required=True)

    data = verbs.add_parser("data", help="write generated shape pictures with captions and questions")
    data.add_argument("--out", required=True, help="folder to write (images/, {train,test,heldout}-{captions,qa}.jsonl)")
    data.add_argument("--train", type=int, default=2000, help="training pictures (default 2000)")
    data.add_argument("--test", type=int, default=200, help="test pictures, training combinations (default 200)")
    data.add_argument("--heldout", type=int, default=200, help="pictures of held-out colour-shape pairs (default 200)")
    data.add_argument("--image-size", type=int, default=48, help="picture side in pixels (default 48)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    data.set_defaults(func=run_data)

    train = verbs.add_parser("train", help="encoder pretraining, stage 1 (projector, captions), stage 2 (projector + "
                                           "LoRA, questions), the text-only baseline, evaluation after each")
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/vlm-shapes.yaml")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="recipe overrides, e.g. out=runs/vlm stage1.steps=50 lm_layers=4 (default: none)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    train.set_defaults(func=run_train)

    evaluate = verbs.add_parser("eval", help="captioning and question-answering accuracy on the test and held-out splits")
    evaluate.add_argument("--model", required=True, help="a vision-language model folder (OUT/stage2 of vlm train)")
    evaluate.add_argument("--data", required=True, help="the folder written by `lmforge vlm data`")
    evaluate.add_argument("--limit", type=int, default=100, help="pictures per split (default 100)")
    evaluate.add_argument("--text-only", action="store_true", help="give the model the prompts without the pictures")
    evaluate.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    evaluate.set_defaults(func=run_eval)


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        torch.set_num_threads(args.threads)


def run_data(args: argparse.Namespace) -> int:
    from lmforge.data.shapes import write_shapes_dataset

    out = write_shapes_dataset(args.out, train=args.train, test=args.test, heldout=args.heldout, seed=args.seed,
                               image_size=args.image_size)
    print(f"wrote {args.train + args.test + args.heldout} pictures with captions and questions to {out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from lmforge.eval.vision import evaluate_shapes
    from lmforge.train.config import build_dataclass
    from lmforge.train.vlm import VLMRecipe, train_vlm

    _threads(args)
    recipe = build_dataclass(VLMRecipe, apply_overrides(read_recipe(args.config), args.overrides))
    report = train_vlm(recipe, evaluate_shapes, say=lambda text: print(text, flush=True))
    print(json.dumps({name: stage["summary"] for name, stage in report["stages"].items()}, indent=1))
    print(f"report: {Path(recipe.out) / 'report.json'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from lmforge.eval.vision import evaluate_shapes
    from lmforge.io.vision import load_vision_model

    _threads(args)
    vlm, tokenizer = load_vision_model(args.model)
    result = evaluate_shapes(vlm, tokenizer, args.data, with_images=not args.text_only, limit=args.limit)
    print(json.dumps({split: {**r, "examples": r["examples"][:2]} for split, r in result["splits"].items()}, indent=1))
    return 0


def image_chat(args: argparse.Namespace) -> int:
    """`lmforge chat --model VLM_FOLDER --image PICTURE --prompt TEXT`: one answer about the picture."""
    from lmforge.infer.vision import answer_prompt
    from lmforge.io.vision import is_vision_folder, load_vision_model

    if args.prompt is None:
        raise ValueError("--image needs --prompt (one question about the picture)")
    if not is_vision_folder(args.model):
        raise ValueError(f"--image needs a vision-language model folder (OUT/stage2 of `lmforge vlm train`); "
                         f"{args.model} is not one")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    vlm, tokenizer = load_vision_model(args.model)
    content = [{"type": "image_url", "image_url": {"url": str(Path(args.image).resolve())}},
               {"type": "text", "text": args.prompt}]
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": content}]
    text, _, _ = answer_prompt(vlm, tokenizer, messages, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p or 1.0, seed=args.seed)
    print(text)
    return 0
