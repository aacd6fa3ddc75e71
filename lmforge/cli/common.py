"""Flags shared by several verbs: model selection and sampling."""

from __future__ import annotations

import argparse

import torch

from lmforge.core.device import parse_device, parse_dtype
from lmforge.infer.sampling import SamplingParams
from lmforge.io.registry import DEFAULT_MODEL, load_model


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a known name (see `lmforge models`), a GGUF file or a model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default float32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )


def load_from_args(args: argparse.Namespace):
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, dtype=parse_dtype(args.dtype), device=parse_device(args.device))
