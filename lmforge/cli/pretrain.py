"""`lmforge pretrain --config configs/NAME.yaml [key=value ...]`: train a model from scratch.

Overrides use dotted keys into the YAML (`optim.lr=3e-3`, `model.n_layers=6`, `max_steps=200`);
values are read as YAML (numbers, true/false, lists). The same command works under
`torchrun --nproc-per-node N -m lmforge.cli.main pretrain ...`. `--print-config` prints the
recipe (the defaults, or --config with its overrides) as YAML instead of training.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from lmforge.cli.common import report_error
from lmforge.cli.recipes import apply_overrides, default_recipe, read_recipe, recipe_keys, recipe_yaml
from lmforge.io.checkpoint import CheckpointError
from lmforge.train.config import PretrainConfig


HEADER = """lmforge pretrain recipe: every key with its default (`lmforge pretrain --print-config`).
Required: data (a folder written by `lmforge prepare`) and at least one of max_steps, max_tokens
and time_budget_s. model.vocab_size and model.max_seq_len are taken from the data's tokenizer
and from seq_len, whatever is written here. architecture: lstm trains the lstm section's shape
instead of the model section's (its vocab_size is the data's too)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain a language model from scratch on prepared token shards",
        description="Train a model from scratch on token shards written by `lmforge prepare`, as a YAML recipe "
                    "says (see configs/); KEY=VALUE arguments override its keys (dotted, values read as YAML).",
        epilog="recipe keys (`lmforge pretrain --print-config` prints them with their defaults): "
               + ", ".join(recipe_keys(PretrainConfig)))
    parser.add_argument("--config", default=None,
                        help="YAML recipe, e.g. configs/tiny-stdlib.yaml (required to train; default: none)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. optim.lr=3e-3")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--print-config", action="store_true",
                        help="print the recipe as YAML and exit: every key with its default, or --config with its "
                             "overrides applied")
    parser.set_defaults(func=run)


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    return PretrainConfig.from_dict(apply_overrides(read_recipe(path), list(overrides)))


def print_config(args: argparse.Namespace) -> None:
    if args.config is not None:
        print(recipe_yaml(load_config(args.config, args.overrides)), end="")
        return
    recipe = apply_overrides(default_recipe(PretrainConfig), list(args.overrides))
    # The keys and types are checked as a run would check them (data and a run length filled in for the check).
    PretrainConfig.from_dict(dict(recipe, data=recipe["data"] or "DATA", max_steps=recipe["max_steps"] or 1))
    print(recipe_yaml(recipe, HEADER), end="")


def run(args: argparse.Namespace) -> int:
    from lmforge.train.step import NonFiniteLossError
    from lmforge.train.pretrain import pretrain

    if args.print_config:
        print_config(args)
        return 0
    if args.config is None:
        raise ValueError("pretrain needs --config RECIPE.yaml (see configs/; `lmforge pretrain --print-config` "
                         "prints every key with its default)")
    config = load_config(args.config, args.overrides)
    try:
        result = pretrain(config, resume=args.resume, show_progress=not args.quiet)
    except (NonFiniteLossError, CheckpointError) as error:
        report_error(error, args)
        return 1
    if os.environ.get("RANK", "0") == "0" and result.tokens:  # cost.json: FLOPs, time, energy and money
        from lmforge.cli.costs import write_training_cost
        from lmforge.data.shards import TokenData

        vocab_size = TokenData.open(config.data).meta["vocab_size"]
        model = (dataclasses.replace(config.lstm, vocab_size=vocab_size) if config.architecture == "lstm"
                 else config.model.replace(vocab_size=vocab_size, max_seq_len=config.seq_len))
        write_training_cost(result.out_dir, model, config.seq_len, result.tokens, result.train_seconds)
    if result.checkpoint is not None and not args.quiet:
        verb = "lstm-generate" if config.architecture == "lstm" else "generate"
        hint = f"try: lmforge {verb} --model {result.checkpoint} --prompt ..."
        print(f"checkpoint: {result.checkpoint}  ({hint})")
    return 0
