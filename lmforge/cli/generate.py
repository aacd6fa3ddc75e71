"""`lmforge generate`: raw text completion (no chat template)."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.common import (add_engine_flags, add_model_flags, add_sampling_flags, engine_from_args,
                                load_from_args, sampling_params)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="complete a prompt (raw text, streamed)")
    add_model_flags(parser)
    add_engine_flags(parser, compile_auto="off")
    add_sampling_flags(parser, max_new_tokens=128)
    parser.add_argument("--prompt", required=True, help="the text to continue (no chat template)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    model, tokenizer = load_from_args(args)
    engine = engine_from_args(args, model, tokenizer, max_batch_size=1, compile_auto=False)
    sys.stdout.write(args.prompt)
    for delta in engine.stream(args.prompt, params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
