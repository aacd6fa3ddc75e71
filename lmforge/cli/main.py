"""`lmforge VERB ...`: the only place that parses flags.

Each verb lives in its own module in this package and exposes
    register(subparsers) -> None   # adds its sub-parser and sets `func=run`
so new verbs are added by dropping in a module, without touching this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import lmforge
import lmforge.cli as cli_package
from lmforge.cli.common import DEBUG_VARIABLE, Parser, report_error


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lmforge", description=lmforge.__doc__)  # verbs inherit its help formatter
    parser.add_argument("--version", action="version", version=f"lmforge {lmforge.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, print its full traceback before the one-line message ({DEBUG_VARIABLE}=1 "
                             "in the environment does the same)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("main", "common"):
            continue
        module = importlib.import_module(f"lmforge.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        # User errors (bad files, bad flags, missing packages, an output folder that cannot be written)
        # get one clear line; --debug adds the traceback.
        report_error(error, args)
        return 2


if __name__ == "__main__":
    sys.exit(main())
