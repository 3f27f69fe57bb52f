"""``comfy-int8``: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module under cli/, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "Convert a checkpoint to a ComfyUI-native INT8 file (streams; never touches the input)."),
    "inspect": ("inspect", "Show a checkpoint's format, model family, preset, dtypes, bytes and metadata."),
    "bench": ("bench", "Benchmarks: kernels, e2e, fidelity (run the speed ones on a GPU)."),
    "demo": ("demo", "Quantize a built-in tiny diffusion transformer and compare it with 16-bit (no model needed)."),
}


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
