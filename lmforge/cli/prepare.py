"""`lmforge prepare`: text files -> deduplicated token shards with a train/val split, optionally
with identifiers scrubbed (--scrub-pii) and secret canaries planted (--canaries N)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lmforge.data.canaries import CanaryPlanter, plant_canaries, write_canaries
from lmforge.data.pii import PII_TYPES, PiiScrubber
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
    privacy = parser.add_argument_group("privacy (lmforge.data.pii, lmforge.data.canaries)")
    privacy.add_argument("--scrub-pii", action="store_true",
                         help="replace e-mail addresses, phone numbers, IP addresses, card numbers (Luhn), IBANs "
                              "(mod 97) and US SSNs by typed placeholders such as <EMAIL>, and report the counts")
    privacy.add_argument("--pii-regions", default="US",
                         help="countries whose national phone formats count as phone numbers, comma-separated ISO "
                              "codes; numbers written with + are recognised for every country (default US)")
    privacy.add_argument("--canaries", type=int, default=0, metavar="N",
                         help="plant N random secret canaries in the train split (The Secret Sharer) (default 0: none)")
    privacy.add_argument("--canary-repeats", default="1,4,16,64",
                         help="how many copies each canary gets, cycled over the canaries (default 1,4,16,64)")
    privacy.add_argument("--canary-kinds", default="digits",
                         help="canary formats, comma-separated, cycled: digits, ssn, phone, card, email "
                              "(default digits)")
    privacy.add_argument("--canary-file", type=Path, default=None,
                         help="where the canaries are written (default OUT/canaries.jsonl)")
    privacy.add_argument("--canary-seed", type=int, default=0, help="seed of the secrets and their positions (default 0)")
    parser.set_defaults(func=run)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} must be positive integers, got {text!r}")
    return values


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
    canaries, planter, scrubber = [], None, None
    if args.canaries:
        canaries = plant_canaries(args.canaries, _int_list(args.canary_repeats, "--canary-repeats"),
                                  [k.strip() for k in args.canary_kinds.split(",") if k.strip()], seed=args.canary_seed)
        # Copies land in the part of the stream that stays train in a tail split too.
        planter = CanaryPlanter(canaries, int(total * (1 - args.val_fraction)), seed=args.canary_seed)
    if args.scrub_pii:
        scrubber = PiiScrubber(tuple(r.strip().upper() for r in args.pii_regions.split(",") if r.strip()))

    def privacy_meta() -> dict:
        meta = {}
        if scrubber is not None:
            meta["pii_scrubbed"] = {kind: scrubber.counts.get(kind, 0) for kind in PII_TYPES}
        if planter is not None:
            meta["canaries"] = {"count": len(canaries), "copies": planter.planted}
        return meta
    with Progress(TextColumn("[bold]prepare"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn()) as progress:
        task = progress.add_task("prepare", total=total)
        data = prepare_corpus(args.input, args.out, encode_batch=tokenizer.encode_batch, vocab_size=tokenizer.vocab_size,
                              boundary_id=boundary, token_bytes=token_byte_lengths(tokenizer),
                              tokenizer_folder=args.tokenizer, options=options,
                              on_progress=lambda done: progress.update(task, completed=min(done, total)),
                              plant=planter, scrub=scrubber, extra_meta=privacy_meta)
        progress.update(task, completed=total)
    meta = data.meta
    print(f"{meta['documents_read']:,} documents read, {meta['duplicates_removed']:,} exact duplicates removed")
    for name in ("train", "val"):
        split = meta["splits"][name]
        print(f"{name}: {split['tokens']:,} tokens in {len(split['shards'])} shard(s) ({data.train.dtype.name}), "
              f"{split['bytes'] / max(split['tokens'], 1):.2f} bytes per token")
    for reason, count in meta["skipped"].items():
        print(f"skipped {count:,}: {reason}")
    if scrubber is not None:
        found = meta["pii_scrubbed"]
        print("PII replaced: " + (", ".join(f"{kind} {count:,}" for kind, count in found.items() if count) or "none found"))
    if canaries:
        path = write_canaries(canaries, args.canary_file or data.folder / "canaries.jsonl")
        print(f"{len(canaries)} canaries planted ({planter.planted:,} copies in the train split): {path}")
    print(f"written to {data.folder}")
    return 0
