"""`lmforge pretrain --config configs/NAME.yaml [key=value ...]`: train a model from scratch.

Overrides use dotted keys into the YAML (`optim.lr=3e-3`, `model.n_layers=6`, `max_steps=200`);
values are read as YAML (numbers, true/false, lists). The same command works under
`torchrun --nproc-per-node N -m lmforge.cli.main pretrain ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmforge.cli.recipes import apply_overrides, read_recipe
from lmforge.io.checkpoint import CheckpointError
from lmforge.train.config import PretrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pretrain", help="pretrain a language model from scratch on prepared token shards")
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. optim.lr=3e-3")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    return PretrainConfig.from_dict(apply_overrides(read_recipe(path), list(overrides)))


def run(args: argparse.Namespace) -> int:
    from lmforge.train.step import NonFiniteLossError
    from lmforge.train.pretrain import pretrain

    config = load_config(args.config, args.overrides)
    try:
        result = pretrain(config, resume=args.resume, show_progress=not args.quiet)
    except (NonFiniteLossError, CheckpointError) as error:
        print(f"lmforge: error: {error}", file=sys.stderr)
        return 1
    if result.checkpoint is not None and not args.quiet:
        print(f"checkpoint: {result.checkpoint}  (try: lmforge generate --model {result.checkpoint} --prompt ...)")
    return 0
