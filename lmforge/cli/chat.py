"""`lmforge chat`: interactive streaming chat, or one-shot with --prompt."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.common import (add_engine_flags, add_model_flags, add_sampling_flags, engine_from_args,
                                load_from_args, sampling_params)
from lmforge.cli.responsible import add_moderation_flag, load_policy, moderator_for
from lmforge.infer.engine import Engine
from lmforge.infer.moderation import user_text

HELP = "commands: /reset clears the conversation, /exit quits"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chat", help="chat with a model (interactive, or one-shot with --prompt)")
    add_model_flags(parser)
    add_engine_flags(parser, compile_auto="off")
    add_sampling_flags(parser, max_new_tokens=512)
    parser.add_argument("--prompt", default=None, help="ask one question, print the answer and exit (default: none, an interactive chat)")
    parser.add_argument("--system", default=None, help="system prompt (default: none)")
    add_moderation_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    policy = load_policy(args.moderation)
    model, tokenizer = load_from_args(args)
    engine = engine_from_args(args, model, tokenizer, max_batch_size=1, compile_auto=False)
    moderator = moderator_for(policy, model, tokenizer)
    base = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        answer = _reply(engine, base + [{"role": "user", "content": args.prompt}], params, moderator)
        return 0 if answer is not None else 1

    messages = list(base)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"lmforge chat with {args.model} ({HELP})")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages = list(base)
            print("(conversation cleared)")
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer = _reply(engine, messages, params, moderator)
        except ValueError as error:  # e.g. the conversation outgrew the context
            messages.pop()
            print(f"lmforge: {error} (use /reset)", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": answer})
    return 0


def _reply(engine: Engine, messages: list[dict], params, moderator=None) -> str:
    if moderator is not None:  # --moderation: refusals replace what the policy refuses (and are logged)
        if moderator.applies_to("input") and moderator.check(user_text(messages[-1:]), "input").flagged:
            print(moderator.refusal)
            return moderator.refusal
        if moderator.applies_to("output"):  # checked whole, then shown
            text = engine.chat(messages, params).text
            text = moderator.refusal if moderator.check(text, "output").flagged else text
            print(text)
            return text
    pieces = []
    for delta in engine.stream_chat(messages, params):
        pieces.append(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(pieces)
