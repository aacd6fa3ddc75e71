"""`lmforge chat`: interactive streaming chat, or one-shot with --prompt."""

from __future__ import annotations

import argparse
import functools
import sys

from lmforge.cli.common import (add_engine_flags, add_model_flags, add_sampling_flags, engine_from_args,
                                load_from_args, sampling_params)
from lmforge.cli.responsible import add_moderation_flag, load_policy, moderator_for
from lmforge.infer.engine import Engine
from lmforge.infer.moderation import user_text
from lmforge.infer.tools import BUILTIN_TOOLS, check_tool_choice, run_agent

HELP = "commands: /reset clears the conversation, /exit quits"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chat", help="chat with a model (interactive, or one-shot with --prompt)")
    add_model_flags(parser)
    add_engine_flags(parser, compile_auto="off")
    add_sampling_flags(parser, max_new_tokens=512)
    parser.add_argument("--prompt", default=None, help="ask one question, print the answer and exit (default: none, an interactive chat)")
    parser.add_argument("--system", default=None, help="system prompt (default: none)")
    parser.add_argument("--image", default=None,
                        help="a picture (PNG, JPEG, GIF, WebP, BMP) to ask --prompt about; --model must then be a "
                             "vision-language model folder written by `lmforge vlm train` (default: none)")
    parser.add_argument("--tools", default=None,
                        help="built-in tools the model may call, comma-separated: calculator (arithmetic), python "
                             "(a sandboxed program, 5 s, 256 MB, no files or network); calls and results are shown "
                             "on stderr (default: none)")
    parser.add_argument("--tool-choice", default="auto",
                        help="with --tools: auto (the model decides), required (each turn starts with a call), "
                             "none, or the name of the tool to call first (default: auto)")
    add_moderation_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.image is not None:
        from lmforge.cli.vlm import image_chat

        return image_chat(args)
    params = sampling_params(args)
    tools, choice = _tools_from_args(args)
    policy = load_policy(args.moderation)
    model, tokenizer = load_from_args(args)
    engine = engine_from_args(args, model, tokenizer, max_batch_size=1, compile_auto=False)
    moderator = moderator_for(policy, model, tokenizer)
    base = [{"role": "system", "content": args.system}] if args.system else []
    reply = functools.partial(_tool_reply, tools=tools, choice=choice) if tools else _reply
    if args.prompt is not None:
        answer = reply(engine, base + [{"role": "user", "content": args.prompt}], params, moderator)
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
            answer = reply(engine, messages, params, moderator)
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


def _tools_from_args(args: argparse.Namespace) -> tuple[list, object]:
    """The built-in tools named by --tools, and --tool-choice in the form tools.chat takes."""
    names = list(dict.fromkeys(n.strip() for n in (args.tools or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"--tools: unknown tool {unknown[0]!r}; the built-in tools are {', '.join(BUILTIN_TOOLS)}")
    tools = [BUILTIN_TOOLS[n] for n in names]
    choice = args.tool_choice
    if choice not in ("auto", "required", "none"):
        choice = {"type": "function", "function": {"name": choice}}
    if not tools:
        if args.tool_choice != "auto":
            raise ValueError("--tool-choice needs --tools")
        return [], "auto"
    try:
        check_tool_choice(choice, [t.spec for t in tools])
    except ValueError as exc:
        raise ValueError(f"--tool-choice: {exc}") from None
    return tools, choice


def _tool_reply(engine: Engine, messages: list[dict], params, moderator=None, *, tools: list, choice) -> str:
    """A turn that may call tools (`run_agent`): each call and its result is shown on stderr and
    kept in `messages`; the final answer is printed and returned (the caller appends it)."""
    if moderator is not None and moderator.applies_to("input") and moderator.check(messages[-1]["content"], "input").flagged:
        print(moderator.refusal)
        return moderator.refusal

    def show(kind: str, value) -> None:
        if kind == "call":
            print(f"[{value.name}] {value.arguments_json}", file=sys.stderr)
        elif kind == "result":
            print(f"[result] {value}", file=sys.stderr)

    final, conversation = run_agent(engine, messages, tools, params, first_choice=choice, on_event=show)
    messages.extend(conversation[len(messages):-1])  # the calls and their results, before the answer
    text = final.content
    if moderator is not None and moderator.applies_to("output") and moderator.check(text, "output").flagged:
        text = moderator.refusal
    print(text)
    return text
