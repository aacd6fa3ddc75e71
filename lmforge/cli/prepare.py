"""`lmforge prepare`: text files -> deduplicated token shards with a train/val split."""

from __future__ import annotations

import argparse
import os

from lmforge.data.prepare import PrepareOptions, input_bytes, prepare_corpus
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import token_byte_lengths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="tokenize text into memory-mapped token shards")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files, folders, globs (.txt .md .py .jsonl .parquet) or builtin:stdlib")
    parser.add_argument("--tokenizer", required=True, help="folder with tokenizer.json (from `lmforge tokenizer train`)")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically if it exists)")
    parser.add_argument("--val-fraction", type=float, default=0.01, help="share of the data for validation (default 0.01)")
    parser.add_argument("--split", choices=("hash", "tail"), default="hash",
                        help="hash: documents by content hash (default); tail: the last part of the token stream")
    parser.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.parquet (default text)")
    parser.add_argument("--no-dedup", action="store_true", help="keep exact duplicate documents")
    parser.add_argument("--max-bytes", type=float, default=None, help="stop after this many bytes of input text (default: all of it)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default 1e8)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    tokenizer = Tokenizer.from_folder(args.tokenizer)
    boundary = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if boundary is None:
        raise ValueError(f"{args.tokenizer}: the tokenizer has neither a bos nor an eos token to separate documents")
    options = PrepareOptions(val_fraction=args.val_fraction, split=args.split, text_field=args.text_field,
                             dedup=not args.no_dedup, max_bytes=int(args.max_bytes) if args.max_bytes else None,
                             shard_tokens=args.shard_tokens)
    total = input_bytes(args.input)
    if options.max_bytes:
        total = min(total, options.max_bytes)
    with Progress(TextColumn("[bold]prepare"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn()) as progress:
        task = progress.add_task("prepare", total=total)
        data = prepare_corpus(args.input, args.out, encode_batch=tokenizer.encode_batch, vocab_size=tokenizer.vocab_size,
                              boundary_id=boundary, token_bytes=token_byte_lengths(tokenizer),
                              tokenizer_folder=args.tokenizer, options=options,
                              on_progress=lambda done: progress.update(task, completed=min(done, total)))
        progress.update(task, completed=total)
    meta = data.meta
    print(f"{meta['documents_read']:,} documents read, {meta['duplicates_removed']:,} exact duplicates removed")
    for name in ("train", "val"):
        split = meta["splits"][name]
        print(f"{name}: {split['tokens']:,} tokens in {len(split['shards'])} shard(s) ({data.train.dtype.name}), "
              f"{split['bytes'] / max(split['tokens'], 1):.2f} bytes per token")
    for reason, count in meta["skipped"].items():
        print(f"skipped {count:,}: {reason}")
    print(f"written to {data.folder}")
    return 0
