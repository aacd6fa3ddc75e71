"""`lmforge pretrain --config configs/NAME.yaml [key=value ...]`: train a model from scratch.

Overrides use dotted keys into the YAML (`optim.lr=3e-3`, `model.n_layers=6`, `max_steps=200`);
values are read as YAML (numbers, true/false, lists). The same command works under
`torchrun --nproc-per-node N -m lmforge.cli.main pretrain ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from lmforge.io.checkpoint import CheckpointError
from lmforge.train.config import PretrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pretrain", help="pretrain a language model from scratch on prepared token shards")
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. optim.lr=3e-3")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (`a.b=c`) in a nested dict; values parsed as YAML scalars or lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return PretrainConfig.from_dict(apply_overrides(data, list(overrides)))


def run(args: argparse.Namespace) -> int:
    from lmforge.train.helpers import NonFiniteLossError
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
