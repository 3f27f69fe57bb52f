"""`comfy-int8 convert IN OUT`: write a ComfyUI-native int8 file (streams tensor by tensor; never touches IN).

Exit codes: 0 written; 1 the conversion failed (one line on stderr, nothing left at OUT; ``--debug`` for the
traceback); 2 bad command line; 130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP (partial file removed).
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..int8.config import OUTLIER_METHODS
from ..int8.formats import CheckpointError, open_checkpoint
from ..int8.formats.converter import ConvertReport, convert_checkpoint
from ..int8.formats.writer import STOCK_INCOMPATIBLE_METHODS
from ..int8.quantize import NonFiniteWeightError
from ..int8.quantize_model import QuantizeConfig
from ..presets import AUTO, detect_family, preset_names, resolve_preset
from .failures import one_line, print_error

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="source checkpoint (.safetensors: 16-bit, fp8 or int8)")
    parser.add_argument("output", metavar="OUT", help="the int8 .safetensors file to write")
    parser.add_argument("--preset", default=AUTO, choices=[AUTO, *preset_names()],
                        help="which layers stay 16-bit: a model family, or auto (detect from the keys; default)")
    parser.add_argument("--outlier-method", default="hadamard", choices=list(OUTLIER_METHODS),
                        help="hadamard (ComfyUI's convrot; default), none, or smooth (refused for files: stock "
                             "ComfyUI cannot apply it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"],
                        help="where layers are quantized (default: cuda when available)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_summary(report: ConvertReport, preset_message: str) -> None:
    c = report.counts
    print(preset_message)
    print(f"Wrote {report.output}")
    print(f"  source format     {report.source_format}  ({report.source})")
    print(f"  layers            {c.get('quantize', 0)} quantized, {c.get('copy_int8', 0)} int8 copied exactly, "
          f"{c.get('requantize', 0)} int8 re-quantized, {len(report.kept)} kept 16-bit")
    print(f"  outlier method    {report.outlier_method}")
    print(f"  bytes             {_gib(report.bytes_in)} -> {_gib(report.bytes_out)}")
    print(f"  time              {report.seconds:.1f} s")
    if report.dropped_keys:
        print(f"  left out          {report.dropped_keys} tensors outside the diffusion model (VAE / text encoders)")
    print(f"  source sha256     {report.source_sha256}")


def _check_preset_matches(path: str, name: str, keys: list[str]) -> str | None:
    """An explicit preset on keys of no known family is almost always the wrong file: refuse (exit 1)."""
    if name == AUTO:
        return None
    family = detect_family(keys)
    if family is None:
        return (f"error: '{path}': its keys match no known model family, but --preset {name} was asked for. Is it "
                "a diffusion model file? Use --preset auto to convert it with the conservative default preset.")
    if family != name:
        print(f"warning: the keys look like '{family}', but --preset {name} was asked for; using {name}.",
              file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA GPU; use --device cpu.", file=sys.stderr)
        return EXIT_USAGE
    if args.outlier_method in STOCK_INCOMPATIBLE_METHODS:
        print(f"error: --outlier-method {args.outlier_method} cannot be used for a file: "
              f"{STOCK_INCOMPATIBLE_METHODS[args.outlier_method]}, so the file would run wrong there. Use hadamard "
              "(ComfyUI's own convrot) or none; smooth is available when quantizing on load.", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open_checkpoint(args.input) as ckpt:
            keys = ckpt.keys()
        problem = _check_preset_matches(args.input, args.preset, keys)
        if problem:
            print(one_line(problem), file=sys.stderr)
            return EXIT_FAILED
        preset, message = resolve_preset(args.preset, keys)
        config = QuantizeConfig(outlier_method=args.outlier_method)
        report = convert_checkpoint(args.input, args.output, preset, config, device=args.device, force=args.force,
                                    progress=not args.quiet)
    except (CheckpointError, NonFiniteWeightError) as exc:  # they name the file/layer and the fix
        print_error(str(exc))
        return EXIT_FAILED
    print_summary(report, message)
    return EXIT_OK
