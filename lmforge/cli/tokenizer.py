"""`lmforge tokenizer train`: train a byte-level BPE or character-level tokenizer."""

from __future__ import annotations

import argparse
import time

from lmforge.tokenizer.train import KINDS, save_tokenizer, train_tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train tokenizers")
    verbs = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = verbs.add_parser("train", help="train a tokenizer on text files and save tokenizer.json")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="files, folders, globs (.txt .md .py .jsonl .parquet) or builtin:stdlib")
    train.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size incl. specials (default 8192)")
    train.add_argument("--kind", choices=KINDS, default="bpe", help="bpe (byte-level) or char (one token per character)")
    train.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    train.add_argument("--max-bytes", type=float, default=None, help="train on at most this many bytes of text (default: all of it)")
    train.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.parquet (default text)")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    tokenizer, report = train_tokenizer(args.input, vocab_size=args.vocab_size, kind=args.kind,
                                        max_bytes=int(args.max_bytes) if args.max_bytes else None, text_field=args.text_field)
    out = save_tokenizer(tokenizer, args.out, report)
    print(f"trained a {report.kind} tokenizer with {report.vocab_size} tokens on {report.train_documents:,} documents "
          f"({report.train_bytes / 1e6:.1f} MB) in {time.time() - started:.1f}s")
    print(f"held-out sample: {report.heldout_documents} documents, {report.heldout_bytes:,} bytes -> "
          f"{report.heldout_tokens:,} tokens = {report.bytes_per_token:.2f} bytes per token")
    print(f"saved to {out / 'tokenizer.json'}")
    return 0
