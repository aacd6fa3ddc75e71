"""`lmforge t5`, `lmforge bert`, `lmforge fill-mask`, `lmforge t5-generate`, `lmforge lstm-generate`: the
encoder-decoder, encoder and recurrent families (the LSTM trains with `lmforge pretrain architecture=lstm`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmforge.cli.recipes import default_recipe, recipe_data
from lmforge.core.progress import ProgressDisplay
from lmforge.io.hf_seq2seq import load_bert, load_lstm, load_t5
from lmforge.model.bert import BertForMaskedLM
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.config import build_dataclass
from lmforge.train.mlm import BertRecipe, fill_mask, run_bert
from lmforge.train.recurrent import sample_text
from lmforge.train.seq2seq import T5Recipe, generate_texts, run_t5

T5_FLAGS = {"data": "data", "out": "out_dir", "task": "task", "pairs": "pairs", "pretrain_steps": "pretrain.max_steps",
            "pretrain_time": "pretrain.time_budget_s", "finetune_steps": "finetune.max_steps",
            "finetune_time": "finetune.time_budget_s", "batch_size": "pretrain.batch_size", "threads": "pretrain.threads",
            "seed": "pretrain.seed"}
BERT_FLAGS = {"data": "data", "out": "out_dir", "pretrain_steps": "pretrain.max_steps",
              "pretrain_time": "pretrain.time_budget_s", "classifier_steps": "classifier.max_steps",
              "classifier_time": "classifier.time_budget_s", "batch_size": "pretrain.batch_size",
              "threads": "pretrain.threads", "seed": "pretrain.seed"}


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--config", help="a YAML recipe; flags and KEY=VALUE overrides apply on top "
                                         "(default: none, the recipe's defaults)")
    parser.add_argument("--data", help="a prepared data folder (`lmforge prepare`); its tokenizer is the model's "
                                       "(no default: required here or in --config)")
    parser.add_argument("--out", help=f"run folder (default runs/{name})")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps (default 1000; 0 skips pretraining)")
    parser.add_argument("--pretrain-time", type=float,
                        help="or: pretraining seconds, ending at whichever comes first (default: no time limit)")
    parser.add_argument("--batch-size", type=int, help="pretraining batch size (default 32)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--seed", type=int, help="seed of weights, data and generated items (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. model.d_model=64 finetune.optim.lr=1e-3")


def register(subparsers: argparse._SubParsersAction) -> None:
    t5 = subparsers.add_parser(
        "t5", help="train a T5: span-corruption pretraining, then seq2seq fine-tuning, held-out exact match",
        description="Pretrains a T5 (HF T5 layout) with span corruption on a prepared data folder, fine-tunes it on "
                    "input -> target pairs (--pairs JSONL, else the generated --task), reports held-out exact match "
                    "and writes OUT/pretrained, OUT/finetuned (Hugging Face folders) and OUT/results.json. Recipe "
                    "keys: T5Recipe in lmforge/train/seq2seq.py.")
    _common(t5, "t5")
    t5.add_argument("--task", help="generated task for fine-tuning: add, multiply, count, reverse, convert "
                                   "(default reverse)")
    t5.add_argument("--pairs", help='JSONL of {"input": ..., "target": ...}, its last heldout_items records held out (default: none, use --task)')
    t5.add_argument("--finetune-steps", type=int, help="fine-tuning steps (default 1000)")
    t5.add_argument("--finetune-time", type=float, help="or: fine-tuning seconds (default: no time limit)")
    t5.set_defaults(func=lambda args: _train(args, T5Recipe, T5_FLAGS, run_t5))

    bert = subparsers.add_parser(
        "bert", help="train a BERT: masked-LM pretraining (80/10/10), then a topic classifier, held-out accuracy",
        description="Pretrains a BERT (HF BERT layout) with the masked-LM objective on a prepared data folder, then "
                    "fine-tunes a classifier head on generated topic sentences (lmforge/data/topics.py), reports "
                    "held-out accuracy and writes OUT/pretrained, OUT/classifier (Hugging Face folders) and "
                    "OUT/results.json. Recipe keys: BertRecipe in lmforge/train/mlm.py.")
    _common(bert, "bert")
    bert.add_argument("--classifier-steps", type=int, help="classifier fine-tuning steps (default 300)")
    bert.add_argument("--classifier-time", type=float, help="or: classifier fine-tuning seconds (default: no time limit)")
    bert.set_defaults(func=lambda args: _train(args, BertRecipe, BERT_FLAGS, run_bert))

    fill = subparsers.add_parser("fill-mask", help="fill the <mask> slots of a text with a BERT model",
                                 description="Prints the most likely tokens for each <mask> in --text, with probabilities.")
    fill.add_argument("--model", required=True, help="a BertForMaskedLM folder (e.g. OUT/pretrained of `lmforge bert`)")
    fill.add_argument("--text", required=True, help="text with one or more <mask> markers")
    fill.add_argument("--top-k", type=int, default=5, help="candidates per slot (default 5)")
    fill.set_defaults(func=run_fill_mask)

    t5_generate = subparsers.add_parser(
        "t5-generate", help="greedy output of a T5 model for each --text",
        description="Reads each --text with the encoder and prints the decoder's greedy output (up to eos), one line "
                    "per text. Takes T5ForConditionalGeneration folders: OUT/finetuned of `lmforge t5` or one "
                    "transformers saved (with a tokenizer.json).")
    t5_generate.add_argument("--model", required=True, help="a T5 folder (config.json model_type t5)")
    t5_generate.add_argument("--text", required=True, action="append", help="an input text (repeat for several)")
    t5_generate.add_argument("--max-new-tokens", type=int, default=32, help="output tokens at most (default 32)")
    t5_generate.set_defaults(func=run_t5_generate)

    lstm_generate = subparsers.add_parser(
        "lstm-generate", help="continue a prompt with an LSTM language model",
        description="Samples a continuation of --prompt from an LSTM folder (a checkpoint of `lmforge pretrain "
                    "architecture=lstm`, or OUT/lstm/model of `lmforge compare`); the prompt is read after the "
                    "data's document boundary token, as in training. Prints the prompt and its continuation.")
    lstm_generate.add_argument("--model", required=True, help="an LSTM folder (config.json model_type lmforge-lstm)")
    lstm_generate.add_argument("--prompt", default="", help="text to continue (default: empty, a new document)")
    lstm_generate.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    lstm_generate.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0 = greedy "
                                                                             "(default 0.8)")
    lstm_generate.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    lstm_generate.set_defaults(func=run_lstm_generate)


def _train(args: argparse.Namespace, recipe_class: type, flags: dict[str, str], run: Any) -> int:
    data = merged(default_recipe(recipe_class), recipe_data(args, flags))  # unnamed keys keep the recipe's defaults
    if data.get("data") is None:
        raise ValueError("give --data (a folder of `lmforge prepare`) or data: in --config")
    recipe = build_dataclass(recipe_class, data, "")
    with ProgressDisplay(enabled=not args.quiet) as display:
        results = run(recipe, display)
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=2))
    return 0


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it, section by section."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_fill_mask(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    model = load_bert(args.model)
    if not isinstance(model, BertForMaskedLM):
        raise ValueError(f"{args.model} holds a classifier, not a masked-LM model")
    tokenizer = Tokenizer.from_folder(args.model)
    mask_id = model.config.mask_token_id  # lmforge models; Hugging Face ones name a [MASK] token
    if mask_id is None:
        mask_id = tokenizer.token_to_id("[MASK]")
    if mask_id is None:
        raise ValueError(f"{args.model}: config.json has no mask_token_id and the tokenizer no [MASK] token")
    for index, candidates in enumerate(fill_mask(model, tokenizer, args.text, mask_id=mask_id, top_k=args.top_k)):
        shown = ", ".join(f"{token!r} {p:.3f}" for token, p in candidates)
        sys.stdout.write(f"<mask> {index + 1}: {shown}\n")
    return 0


def run_t5_generate(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    model = load_t5(args.model)
    tokenizer = Tokenizer.from_folder(args.model)
    config = model.config
    for text in generate_texts(model, tokenizer, args.text, eos_id=config.eos_token_id, pad_id=config.pad_token_id,
                               max_new_tokens=args.max_new_tokens):
        sys.stdout.write(text + "\n")
    return 0


def run_lstm_generate(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.temperature < 0:
        raise ValueError("--max-new-tokens must be at least 1 and --temperature at least 0")
    model = load_lstm(args.model)
    tokenizer = Tokenizer.from_folder(args.model)
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if start is None:
        raise ValueError(f"{args.model}: the tokenizer has neither a bos nor an eos token to start from")
    text = sample_text(model, tokenizer, [args.prompt], max_new_tokens=args.max_new_tokens, start_id=start,
                       temperature=args.temperature, seed=args.seed)[0]
    sys.stdout.write(args.prompt + text + "\n")
    return 0
