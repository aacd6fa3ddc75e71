"""Flags shared by several verbs (model selection and sampling), the parser every verb uses, and
how errors are reported."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch

from lmforge.core.device import parse_device, parse_dtype
from lmforge.infer.engine import Engine, suggested_threads
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.speculative import PromptLookup
from lmforge.io.gguf import QUANT_MODES
from lmforge.io.registry import DEFAULT_MODEL, load_model


DEBUG_VARIABLE = "LMFORGE_DEBUG"


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """`lmforge --debug ...`, or LMFORGE_DEBUG set to anything but "" or "0"."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def report_error(error: BaseException, args: argparse.Namespace | None = None, suffix: str = "") -> None:
    """An error as one line on stderr ("lmforge: error: ..."); in debug mode its traceback first."""
    if debug_enabled(args):
        traceback.print_exception(error, file=sys.stderr)
    print(f"lmforge: error: {error}{suffix}", file=sys.stderr)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help shows its default: a text that does not mention one gets "(default X)".

    Options whose default is None or empty say in their own words what their absence means;
    on/off flags (store_true) are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or action.required or action.nargs == 0
                or default in (None, argparse.SUPPRESS) or (isinstance(default, (list, tuple)) and not default)):
            return text
        return f"{text} (default %(default)s)"


class Parser(argparse.ArgumentParser):
    """lmforge's argument parser: `HelpFormatter` unless told otherwise. Sub-commands inherit the class
    (argparse builds sub-parsers with the parent's class), so every verb's --help shows defaults."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a known name (see `lmforge models`), a GGUF file, a model folder, or a Hugging Face "
                             "repository id such as HuggingFaceTB/SmolLM2-135M-Instruct (read from the hub cache, "
                             f"downloaded when online and not cached) (default {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch (default: about one per 32 MB of weights, at most "
                             "PyTorch's own choice; small models decode faster on few threads)")
    parser.add_argument("--quant", default="auto", choices=QUANT_MODES,
                        help="weights on the quantized CPU kernels: auto = a GGUF file's Q4_0/Q4_1/Q8_0 tensors "
                             "run as stored (exact; float models stay float), int8 = every linear layer and the "
                             "embedding in int8 per channel, int4 = in 4 bits per group of 32, none = float weights")


def add_engine_flags(parser: argparse.ArgumentParser, compile_auto: str) -> None:
    """Flags of the decode loop; `compile_auto` says what `--compile auto` means for this verb."""
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off", "max"],
                        help=f"run the decode step under torch.compile: faster steps after a one-time compilation "
                             f"(minutes the first time on a 2-core machine, then about 40 s from the disk "
                             f"cache); max = a quantized model's weights frozen into the graphs and inductor's "
                             f"own int4 kernels where they time faster (about 27%% faster batch-8 steps, 10%% at "
                             f"batch 1, for more memory and about 2 minutes a start); auto = {compile_auto} for "
                             f"this command")
    parser.add_argument("--speculate", type=int, default=0, metavar="N",
                        help="prompt-lookup speculative decoding: draft up to N tokens by matching the last tokens "
                             "against the prompt and output so far, verified in one step (same output; faster when "
                             "the answer repeats its input); 0 = off")


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample among the K most likely tokens only (default: off)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample among the most likely tokens whose probabilities add up to P (default: off)")
    parser.add_argument("--min-p", type=float, default=None,
                        help="drop tokens less likely than MIN_P times the most likely one (default: off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="> 1 makes tokens already in the prompt or output less likely; 1 = off")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for sampling, for repeatable samples (default: none, a new draw each run)")
    parser.add_argument("--stop", action="append", default=[],
                        help="stop when this string appears, repeatable (default: none; the tokenizer's "
                             "end-of-sequence tokens always stop)")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )


def load_from_args(args: argparse.Namespace):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    model, tokenizer = load_model(args.model, dtype=parse_dtype(args.dtype), device=device,
                                  quant=getattr(args, "quant", "none"))
    if not args.threads and device.type == "cpu":
        torch.set_num_threads(suggested_threads(model))
    return model, tokenizer


def compile_choice(flag: str, auto: bool) -> bool | str:
    """Engine's `compile` for a --compile flag: True, False or "max"."""
    return "max" if flag == "max" else flag == "on" or (flag == "auto" and auto)


def engine_from_args(args: argparse.Namespace, model, tokenizer, max_batch_size: int, compile_auto: bool,
                     **engine_options) -> Engine:
    """An Engine with the --compile and --speculate choices of `add_engine_flags`."""
    if args.speculate < 0:
        raise ValueError(f"--speculate must be 0 (off) or a positive number of draft tokens, got {args.speculate}")
    compile = compile_choice(args.compile, compile_auto)
    speculative = PromptLookup(num_draft=args.speculate) if args.speculate else None
    return Engine(model, tokenizer, max_batch_size=max_batch_size, compile=compile, speculative=speculative,
                  **engine_options)
