"""`lmforge serve`: an OpenAI-compatible HTTP server (continuous batching) with a web chat page."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from lmforge.cli.common import add_engine_flags, add_model_flags, compile_choice, load_from_args
from lmforge.cli.responsible import add_moderation_flag, load_policy, moderator_for
from lmforge.data.hub import is_repo_id
from lmforge.io.registry import NAMED_MODELS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, with a web chat page at /",
        description="Serve /v1/chat/completions, /v1/completions and /v1/models (OpenAI-compatible, with "
                    "streaming and JSON-schema output), /health, and a chat page at /.")
    add_model_flags(parser)
    add_engine_flags(parser, compile_auto="on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("LMFORGE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $LMFORGE_API_KEY, else none)")
    parser.add_argument("--max-concurrency", type=int, default=8,
                        help="sequences generated at once; requests beyond that get HTTP 429 (default 8)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser pages from ORIGIN to call the API, repeatable (default: none, same-origin only)")
    parser.add_argument("--model-name", default=None,
                        help="the id clients pass as `model` (default: the --model name, or the file/folder name)")
    parser.add_argument("--default-max-tokens", type=int, default=1024,
                        help="chat reply limit when a request sets no max_tokens (default 1024)")
    parser.add_argument("--rag", default=None, metavar="INDEX",
                        help="a RAG index folder (lmforge rag index) answered at POST /v1/rag/ask (default: none)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level")
    add_moderation_flag(parser)
    parser.set_defaults(func=run)


def model_id(args: argparse.Namespace) -> str:
    if args.model_name:
        return args.model_name
    text = str(args.model)
    if text.lower() in NAMED_MODELS:
        return text.lower()
    path = Path(text).expanduser()
    return text if is_repo_id(text) and not path.exists() else path.name  # a hub id stays whole, as OpenAI's ids


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from lmforge.serve import ServeConfig, create_app
    from lmforge.io.vision import is_vision_folder, load_vision_model

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    config = ServeConfig(
        model_id=model_id(args), api_key=args.api_key or None, max_concurrency=args.max_concurrency,
        cors_origins=tuple(args.cors_origin), default_max_tokens=args.default_max_tokens,
        compile=compile_choice(args.compile, True), speculate=args.speculate,
    )
    if args.speculate < 0:
        raise ValueError(f"--speculate must be 0 (off) or a positive number of draft tokens, got {args.speculate}")
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        print(f"lmforge: warning: serving on {args.host} without --api-key; anyone who can reach it may use it",
              file=sys.stderr)
    policy = load_policy(args.moderation)  # a bad policy or index fails before the model loads
    rag_index = None
    if args.rag:
        from lmforge.rag.index import RagIndex

        rag_index = RagIndex.load(args.rag)
    vision = None
    if is_vision_folder(args.model):  # a vision-language model: chat messages may hold images
        vision, tokenizer = load_vision_model(args.model)
        model = vision.lm
    else:
        model, tokenizer = load_from_args(args)
    if policy is not None:
        config = dataclasses.replace(config, moderation=moderator_for(policy, model, tokenizer))
    if config.compile:
        print("lmforge: compiling the decode step (once; cached on disk for the next start)", file=sys.stderr, flush=True)
    app = create_app(model, tokenizer, config, rag_index=rag_index, vision=vision)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lmforge: serving {config.model_id} on http://{host}:{args.port} (chat page at /, API at /v1)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
