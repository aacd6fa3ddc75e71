"""`lmforge models`: list the named models and whether they are installed."""

from __future__ import annotations

import argparse

from lmforge.io.registry import NAMED_MODELS, named_model_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list named models")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, entry in sorted(NAMED_MODELS.items()):
        try:
            where = str(named_model_path(name))
        except FileNotFoundError:
            where = f"not installed: {entry.install}"
        print(f"{name}\n  {entry.description}\n  {where}")
    return 0
