"""`lmforge audit`: privacy audits.

    lmforge audit memorization --model runs/canary --canaries data/canary/canaries.jsonl
        exposure of every planted canary (The Secret Sharer) and whether greedy decoding from its
        prefix gives the secret back; a table by canary kind and repetitions
    lmforge audit pii --lines 2000 --clean builtin:stdlib
        the PII scrubber's recall and precision on a generated labelled set, and its detections
        per MB on text that holds no personal data
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from lmforge.core.files import write_text_atomically


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="privacy audits: canary memorization, PII scrubbing quality")
    verbs = parser.add_subparsers(dest="audit", metavar="AUDIT", required=True)

    memo = verbs.add_parser("memorization", help="exposure and extraction of canaries planted by prepare --canaries",
                            formatter_class=parser.formatter_class)
    memo.add_argument("--model", required=True,
                      help="a run folder (its latest checkpoint), a checkpoint folder, a GGUF file or a model name")
    memo.add_argument("--canaries", required=True, type=Path, help="the canary file that prepare --canaries wrote")
    memo.add_argument("--samples", type=int, default=2000,
                      help="random candidates per canary when its space is too large to score whole (default 2000)")
    memo.add_argument("--enumerate-limit", type=int, default=20_000,
                      help="score every candidate of spaces up to this size: exact ranks (default 20000)")
    memo.add_argument("--seed", type=int, default=0, help="seed of the sampled candidates (default 0)")
    memo.add_argument("--batch-size", type=int, default=64, help="rows per scoring batch (default 64)")
    memo.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default float32)")
    memo.add_argument("--device", default="auto", help="cpu, cuda, or auto (default auto)")
    memo.add_argument("--json", type=Path, default=None,
                      help="write the results here (default RUN/memorization.json when --model is a run folder)")
    memo.set_defaults(func=run_memorization)

    pii = verbs.add_parser("pii", help="recall/precision of the PII scrubber and its detections on clean text",
                           formatter_class=parser.formatter_class)
    pii.add_argument("--lines", type=int, default=2000, help="lines of the generated labelled set (default 2000)")
    pii.add_argument("--seed", type=int, default=0, help="seed of the labelled set (default 0)")
    pii.add_argument("--clean", nargs="*", default=["builtin:stdlib"], metavar="PATH",
                     help="text without personal data to count detections on: files, folders, globs or "
                          "builtin:stdlib (default builtin:stdlib); none to skip")
    pii.add_argument("--regions", default="US", help="national phone formats, comma-separated (default US)")
    pii.add_argument("--json", type=Path, default=None, help="write the results here (default: not written)")
    pii.set_defaults(func=run_pii)


def _model_path(text: str) -> tuple[str, Path | None]:
    """The model to load and the run folder it came from (None when not a run folder)."""
    from lmforge.io.checkpoint import latest_checkpoint

    path = Path(text).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path} holds neither a model (config.json) nor a checkpoint (step_*/)")
        return str(latest), path
    return text, None


def run_memorization(args: argparse.Namespace) -> int:
    from lmforge.core.device import parse_device, parse_dtype
    from lmforge.core.progress import ProgressDisplay
    from lmforge.data.canaries import read_canaries
    from lmforge.eval.memorization import AuditConfig, audit_canaries
    from lmforge.io.registry import load_model

    canaries = read_canaries(args.canaries)  # a bad file fails before the model loads
    config = AuditConfig(samples=args.samples, enumerate_limit=args.enumerate_limit, seed=args.seed,
                         batch_size=args.batch_size)
    name, run_dir = _model_path(args.model)
    model, tokenizer = load_model(name, dtype=parse_dtype(args.dtype), device=parse_device(args.device))
    started = time.perf_counter()
    with ProgressDisplay(stream=sys.stderr) as progress:
        results = audit_canaries(model, tokenizer, canaries, config, progress)
    results.update(model=args.model, checkpoint=name, canary_file=str(args.canaries),
                   wall_s=round(time.perf_counter() - started, 3), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    print("| canary | kind | repetitions | exposure (bits) | of log2|R| | method | extracted |")
    print("|---|---|---|---|---|---|---|")
    for row in results["canaries"]:
        print(f"| {row['id']} | {row['kind']} | {row['repetitions']} | {row['exposure']:.2f} | {row['log2_space']:.1f} | "
              f"{row['method']} | {'yes' if row['extracted'] else 'no'} |")
    print("\n| kind | repetitions | canaries | mean exposure | max exposure | extracted |")
    print("|---|---|---|---|---|---|")
    for row in results["by_repetitions"]:
        print(f"| {row['kind']} | {row['repetitions']} | {row['canaries']} | {row['mean_exposure']:.2f} | "
              f"{row['max_exposure']:.2f} | {row['extracted']}/{row['canaries']} |")
    out = args.json or (run_dir / "memorization.json" if run_dir is not None else None)
    if out is not None:
        write_text_atomically(out, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        print(f"results: {out}")
    return 0


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def run_pii(args: argparse.Namespace) -> int:
    from lmforge.data.readers import expand_inputs, iter_documents
    from lmforge.eval.pii import clean_text_detections, labelled_lines, score_detection

    regions = tuple(r.strip().upper() for r in args.regions.split(",") if r.strip())
    expand_inputs(args.clean)  # a missing input fails before the measurement starts
    started = time.perf_counter()
    scores = score_detection(labelled_lines(args.lines, args.seed), regions)
    print(f"labelled set: {scores['lines']:,} lines, {scores['identifiers']:,} identifiers (seed {args.seed})")
    print("| type | identifiers | detected | correct | recall | precision |")
    print("|---|---|---|---|---|---|")
    for kind, row in scores["per_type"].items():
        print(f"| {kind} | {row['gold']} | {row['detected']} | {row['correct']} | {_pct(row['recall'])} | "
              f"{_pct(row['precision'])} |")
    print(f"| all | {scores['identifiers']} | | | {_pct(scores['recall'])} | {_pct(scores['precision'])} |")
    results: dict[str, Any] = {"labelled": scores, "clean": {}}
    for spec in args.clean:
        clean = clean_text_detections([("", text) for text in iter_documents([spec])], regions)
        results["clean"][spec] = clean
        print(f"\n{spec}: {clean['bytes'] / 1e6:.2f} MB, {clean['detections']} detections = "
              f"{clean['per_mb']:.2f} per MB")
        for kind, row in clean["per_type"].items():
            if row["count"]:
                top = ", ".join(f"{text} ({n})" for text, n in row["top"][:6])
                print(f"  {kind}: {row['count']} ({row['per_mb']:.2f}/MB), most frequent: {top}")
    results["wall_s"] = round(time.perf_counter() - started, 3)
    if args.json is not None:
        write_text_atomically(args.json, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        print(f"results: {args.json}")
    return 0
