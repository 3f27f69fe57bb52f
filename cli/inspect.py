"""`comfy-int8 inspect FILE`: format, model family and preset, weights by dtype, bytes, quantized share, metadata.

Reads only the header (and tiny comfy_quant entries), so it is instant on a 24 GB file. Exit codes: 0 shown;
1 the file cannot be read (message on stderr); 2 bad command line.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..int8.formats import FORMATS, Checkpoint, CheckpointError, open_checkpoint
from ..presets import resolve_preset
from .failures import one_line, print_error

_QUANTIZED_DTYPES = ("torch.int8", "torch.float8_e4m3fn", "torch.float8_e5m2")
_MAX_VALUE_CHARS = 160


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a .safetensors checkpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")


def summarize(ckpt: Checkpoint) -> dict:
    """Everything ``inspect`` shows, as plain data."""
    weights = {k: i for k, i in ckpt.infos().items() if k.endswith(".weight") and len(i.shape) >= 2}
    count_by_dtype = Counter(str(i.dtype) for i in weights.values())
    bytes_by_dtype = Counter()
    for info in ckpt.infos().values():
        bytes_by_dtype[str(info.dtype)] += info.nbytes
    quantized_bytes = sum(i.nbytes for i in weights.values() if str(i.dtype) in _QUANTIZED_DTYPES)
    weight_bytes = sum(i.nbytes for i in weights.values())
    quantized_layers = sum(n for d, n in count_by_dtype.items() if d in _QUANTIZED_DTYPES)
    _, preset_message = resolve_preset("auto", ckpt.keys())
    return {
        "file": ckpt.path,
        "format": ckpt.format,
        "format_description": FORMATS.get(ckpt.format, "a comfy_quant format this pack cannot read"),
        "key_layout": ckpt.layout,
        "key_prefix": ckpt.prefix,
        "preset": preset_message,
        "tensors": len(ckpt.keys()),
        "tensors_outside_model": ckpt.outside_keys,
        "weights_by_dtype": dict(count_by_dtype),
        "bytes_by_dtype": dict(bytes_by_dtype),
        "bytes_total": ckpt.file_size,
        "quantized_layers": quantized_layers,
        "quantized_layer_share": quantized_layers / len(weights) if weights else 0.0,
        "quantized_weight_bytes_share": quantized_bytes / weight_bytes if weight_bytes else 0.0,
        "metadata": dict(ckpt.metadata),
    }


def _short(value: str) -> str:
    value = one_line(value)  # a header's strings could carry terminal escape sequences
    return value if len(value) <= _MAX_VALUE_CHARS else value[:_MAX_VALUE_CHARS] + f"... ({len(value)} chars)"


def print_summary(s: dict) -> None:
    print(f"{s['file']}")
    print(f"  format        {s['format']}: {s['format_description']}")
    print(f"  keys          {s['tensors']} tensors, layout {s['key_layout']}"
          + (f", prefix '{s['key_prefix']}'" if s["key_prefix"] else "")
          + (f" ({s['tensors_outside_model']} outside the diffusion model)" if s["tensors_outside_model"] else ""))
    print(f"  preset        {s['preset']}")
    print("  weights       " + ", ".join(f"{n} {d.replace('torch.', '')}" for d, n in sorted(s["weights_by_dtype"].items())))
    print("  bytes         " + ", ".join(f"{d.replace('torch.', '')} {b / 2**20:.1f} MiB"
                                         for d, b in sorted(s["bytes_by_dtype"].items()))
          + f"; total {s['bytes_total'] / 2**30:.2f} GiB")
    print(f"  quantized     {s['quantized_layers']} layers ({s['quantized_layer_share']:.0%} of weights, "
          f"{s['quantized_weight_bytes_share']:.0%} of weight bytes)")
    print("  metadata      " + ("(none)" if not s["metadata"] else ""))
    for k, v in sorted(s["metadata"].items()):
        print(f"    {_short(k)}: {_short(v)}")


def run(args: argparse.Namespace) -> int:
    try:
        with open_checkpoint(args.file) as ckpt:
            summary = summarize(ckpt)
    except CheckpointError as exc:
        print_error(str(exc))
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0
