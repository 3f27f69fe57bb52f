"""``comfy-int8``: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from ..int8.formats.errors import CheckpointError
from .failures import EXIT_FAILED, Interrupted, print_error, signals_raise

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
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f".{module_name}", __package__)
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != "bench":  # bench passes every option on to the benchmark's own parser
            # SUPPRESS: `comfy-int8 --debug convert ...` is not reset to False by the subcommand's default
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(p)
    return parser


def _target(args: argparse.Namespace) -> str:
    """The file a command was working on, for the error line."""
    path = getattr(args, "input", None) or getattr(args, "file", None)
    return f" on '{path}'" if path else ""


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f".{SUBCOMMANDS[args.command][0]}", __package__)
    try:
        with signals_raise():
            return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return _interrupted(args, signal.SIGINT)
    except Interrupted as exc:
        return _interrupted(args, exc.signum)
    except CheckpointError as exc:  # names the file and the fix already
        print_error(str(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last stop: any bug or unforeseen input becomes one line
        if args.debug:
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print_error(f"{args.command} failed{_target(args)}: {type(exc).__name__}"
                    + (f": {detail}" if detail else "") + ". Re-run with --debug for the traceback.")
        return EXIT_FAILED


def _interrupted(args: argparse.Namespace, signum: int) -> int:
    cleaned = " (its partial output file was removed)" if args.command == "convert" else ""
    print(f"comfy-int8 {args.command}: interrupted by {signal.Signals(signum).name}{cleaned}.", file=sys.stderr)
    return 128 + int(signum)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 the work failed (one line on stderr; ``--debug`` adds the traceback), 2 bad command
    line, 128 + N interrupted by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.command:
        parser.print_help()
        return 2
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
