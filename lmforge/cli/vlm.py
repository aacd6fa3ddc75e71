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
                       help="recipe overrides, e.g. out=runs/vlm stage1.steps=50 lm_layers=4; vision_tower=FOLDER uses a "
                            "local CLIP/SigLIP folder (frozen) instead of the small ViT, vision_feature_layer=-2 its "
                            "penultimate layer (default: none)")
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


def run_image_qa(args: argparse.Namespace) -> int:
    """`lmforge eval --task image-qa --model VLM_FOLDER --data DATA`: the held-out questions about
    generated shape pictures (`lmforge.eval.vision.image_qa_results`), accuracy per question kind
    against chance, results written as every `lmforge eval` task's are."""
    import time

    from lmforge.cli.responsible import _outputs, _write
    from lmforge.core.device import parse_dtype
    from lmforge.eval.vision import EVAL_SPLITS, IMAGE_QA_TASK, image_qa_results
    from lmforge.io.vision import is_vision_folder, load_vision_model

    refused = [(args.shots.strip() != "0", "--shots (image-qa is zero-shot)"), (args.cot, "--cot"),
               (args.moderation is not None, "--moderation"), (args.judge or args.baseline, "--judge/--baseline"),
               (args.device not in ("auto", "cpu"), "--device (image-qa runs on the CPU)")]
    for flag in [name for on, name in refused if on]:
        raise ValueError(f"{flag} does not apply to --task {IMAGE_QA_TASK}")
    if args.data is None:
        raise ValueError(f"--task {IMAGE_QA_TASK} needs --data FOLDER (written by `lmforge vlm data`)")
    splits = EVAL_SPLITS if args.split is None else (args.split,)
    if args.split is not None and args.split not in EVAL_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(EVAL_SPLITS)} for --task {IMAGE_QA_TASK}, got {args.split!r}")
    for split in splits:
        if not (args.data / f"{split}-qa.jsonl").is_file():
            raise ValueError(f"{args.data / f'{split}-qa.jsonl'} does not exist; write the data with `lmforge vlm data`")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if not is_vision_folder(args.model):
        raise ValueError(f"--task {IMAGE_QA_TASK} needs a vision-language model folder (OUT/stage2 of `lmforge vlm "
                         f"train`); {args.model} is not one")
    _threads(args)
    started = time.perf_counter()
    vlm, tokenizer = load_vision_model(args.model, dtype=parse_dtype(args.dtype))
    load_s = time.perf_counter() - started
    results = image_qa_results(vlm, tokenizer, args.data, limit=args.limit, splits=splits,
                               max_new_tokens=min(args.max_new_tokens, 16))
    if args.no_samples:
        for run in results["runs"]:
            run.pop("samples")
    results.update(model=args.model, dtype=args.dtype, device="cpu", model_load_s=round(load_s, 3),
                   finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    for run in results["runs"]:
        metrics = run["metrics"]
        print(f"{IMAGE_QA_TASK} {run['split']}: {run['pictures']} pictures, {run['n']} questions ({run['wall_s']:.1f}s)")
        print("| question | accuracy | chance | n |\n|---|---|---|---|")
        for kind, n in run["n_per_kind"].items():
            print(f"| {kind} | {_rate(metrics[f'acc_{kind}'])} | {_rate(metrics[f'chance_{kind}'])} | {n} |")
        print(f"| mean | {_rate(metrics['acc'])} | {_rate(metrics['chance'])} | {run['n']} |")
    _write(results, _outputs(args, IMAGE_QA_TASK))
    return 0


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
