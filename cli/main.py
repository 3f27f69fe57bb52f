"""``comfy-int8``: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module under cli/, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-int8",
        description="INT8 W8A8 tools for ComfyUI diffusion models: convert, inspect, bench, demo.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f".{module_name}", __package__)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 the work failed (message printed), 2 bad command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(f".{SUBCOMMANDS[args.command][0]}", __package__)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
