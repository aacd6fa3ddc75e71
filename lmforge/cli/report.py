"""`lmforge report RUN_DIR`: a markdown report card of a run folder (data, training, evals, cost)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write a markdown report card of a run folder")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="folder to summarise")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default RUN_DIR/report.md)")
    parser.add_argument("--usd-per-hour", type=float, default=0.10,
                        help="machine price for the cost estimate (default 0.10, a small CPU machine)")
    parser.add_argument("--print", action="store_true", help="also print the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.eval.report import write_report

    if args.usd_per_hour < 0:
        raise ValueError("--usd-per-hour must be >= 0")
    path = write_report(args.run_dir, args.out, usd_per_hour=args.usd_per_hour)
    if args.print:
        print(path.read_text(encoding="utf-8"), end="")
    print(f"report: {path}")
    return 0
