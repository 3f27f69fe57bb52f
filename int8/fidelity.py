"""Fidelity harness: how much error W8A8 adds to one Linear, per outlier method and activation distribution.

Inputs are synthetic: Gaussian activations, and activations with the channel outliers published for DiTs (a few
input channels 10-100x larger; LRQ-DiT arXiv 2508.03485, SVDQuant). Weights are Gaussian with std 1/sqrt(K).
The reference is the float64 product of the same (already rounded) input and weight; each method's layer is the
real :class:`~.linear.Int8Linear` built by :func:`~.quantize_model.build_int8_linear`, run through the backend
``auto`` picks on the device. SQNR (dB) = 10 log10(|y|^2 / |y - y_q|^2); relative error = |y - y_q| / |y|.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from .config import Int8Config
from .quantize_model import QuantizeConfig, build_int8_linear

__all__ = [
    "ACTIVATION_KINDS",
    "FIDELITY_METHODS",
    "FLUX_SHAPES",
    "FidelityRow",
    "format_table",
    "make_activations",
    "run_fidelity",
    "sqnr_db",
    "summarize",
]

# (K, N) of the Flux.1 block Linears: qkv, MLP up, MLP down.
FLUX_SHAPES: tuple[tuple[int, int], ...] = ((3072, 9216), (3072, 12288), (12288, 3072))
ACTIVATION_KINDS = ("gaussian", "outliers", "every97x30", "post_gelu")
# smooth: calibrated SmoothQuant (alpha 0.5) from a separate draw of the same distribution;
# smooth_w: SmoothQuant from weight statistics only; bf16: a plain bf16 matmul, for scale.
FIDELITY_METHODS = ("none", "hadamard", "smooth", "smooth_w", "bf16")
_OUTLIER_CHANNELS = 8


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``reference`` in dB (inf when they are equal)."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


def _outlier_gain(k: int, gen: torch.Generator) -> torch.Tensor:
    gain = torch.ones(k, dtype=torch.float64)
    idx = torch.randperm(k, generator=gen)[:_OUTLIER_CHANNELS]
    u = torch.rand(_OUTLIER_CHANNELS, generator=gen, dtype=torch.float64)
    gain[idx] = torch.exp(math.log(10.0) + u * (math.log(100.0) - math.log(10.0)))
    return gain


def make_activations(kind: str, m: int, k: int, seed: int = 0) -> torch.Tensor:
    """``[m, k]`` float32 activations on the CPU.

    gaussian: N(0, 1). outliers: N(0, 1) with 8 channels scaled by factors log-uniform in 10..100.
    every97x30: every 97th channel x30 (the input of the H100 measurements in KERNEL_NOTES).
    post_gelu: GELU(2 N(0, 1)) with 8 outlier hidden units, like an MLP down-projection's input.
    The outlier channels depend on ``k`` only (a property of the layer), so a calibration draw with another
    ``seed`` has them in the same place; ``seed`` sets the values.
    """
    gen = torch.Generator().manual_seed(seed)
    channel_gen = torch.Generator().manual_seed(10_000 + k)  # the outlier channels are a property of the layer
    x = torch.randn(m, k, generator=gen, dtype=torch.float64)
    if kind == "gaussian":
        pass
    elif kind == "outliers":
        x = x * _outlier_gain(k, channel_gen)
    elif kind == "every97x30":
        x[:, ::97] *= 30.0
    elif kind == "post_gelu":
        x = torch.nn.functional.gelu(2.0 * x) * _outlier_gain(k, channel_gen)
    else:
        raise ValueError(f"Unknown activation kind '{kind}'; choose one of {', '.join(ACTIVATION_KINDS)}.")
    return x.float()


@dataclass
class FidelityRow:
    k: int
    n: int
    m: int
    kind: str
    method: str
    sqnr_db: float
    rel_error: float


def _build(method: str, weight: torch.Tensor, calib: torch.Tensor | None, runtime: Int8Config) -> torch.nn.Module:
    outlier = "smooth" if method.startswith("smooth") else method
    stats = calib.abs().amax(dim=0) if method == "smooth" and calib is not None else None
    config = QuantizeConfig(outlier_method=outlier, runtime=runtime)
    return build_int8_linear(f"fidelity_{weight.shape[1]}x{weight.shape[0]}", weight, None, config, stats)


def run_fidelity(
    shapes: Iterable[tuple[int, int]] = FLUX_SHAPES,
    kinds: Iterable[str] = ACTIVATION_KINDS,
    methods: Iterable[str] = FIDELITY_METHODS,
    m: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    runtime: Int8Config | None = None,
) -> list[FidelityRow]:
    """One row per (shape, kind, method). Activations are cast to ``dtype`` before both the reference and the
    quantized product, so only the method's own error is measured (``bf16`` shows a 16-bit matmul for scale).
    Layers that do not depend on the activations (all but calibrated ``smooth``) are built once per shape."""
    runtime = runtime or Int8Config()
    kinds, methods = list(kinds), list(methods)
    rows: list[FidelityRow] = []
    for k, n in shapes:
        gen = torch.Generator().manual_seed(seed + k * 7 + n)
        weight = (torch.randn(n, k, generator=gen) / math.sqrt(k)).to(device=device, dtype=dtype)
        shared = {mt: _build(mt, weight, None, runtime) for mt in methods if mt not in ("smooth", "bf16")}
        for kind in kinds:
            x = make_activations(kind, m, k, seed).to(device=device, dtype=dtype)
            ref = x.double() @ weight.double().t()
            for method in methods:
                if method == "bf16":
                    y = (x.bfloat16() @ weight.bfloat16().t()).float()
                else:
                    calib = make_activations(kind, m, k, seed + 1).to(device=device, dtype=dtype)
                    layer = shared.get(method) or _build(method, weight, calib, runtime)
                    with torch.no_grad():
                        y = layer(x).float()
                rel = ((y.double() - ref).norm() / ref.norm()).item()
                rows.append(FidelityRow(k, n, m, kind, method, sqnr_db(ref, y), rel))
    return rows


def summarize(rows: list[FidelityRow]) -> dict[str, object]:
    """The acceptance numbers: per shape, the error ratio none/hadamard on outlier inputs and the SQNR hadamard
    loses against none on Gaussian inputs (negative = it gains)."""
    by = {(r.k, r.n, r.kind, r.method): r for r in rows}
    out: dict[str, object] = {"outlier_error_ratio_none_over_hadamard": {}, "gaussian_sqnr_cost_db_hadamard": {}}
    for k, n in sorted({(r.k, r.n) for r in rows}):
        key = f"{k}->{n}"
        for kind in ("outliers", "every97x30", "post_gelu"):
            none, had = by.get((k, n, kind, "none")), by.get((k, n, kind, "hadamard"))
            if none and had:
                out["outlier_error_ratio_none_over_hadamard"].setdefault(kind, {})[key] = none.rel_error / had.rel_error
        none, had = by.get((k, n, "gaussian", "none")), by.get((k, n, "gaussian", "hadamard"))
        if none and had:
            out["gaussian_sqnr_cost_db_hadamard"][key] = none.sqnr_db - had.sqnr_db
    return out


def format_table(rows: list[FidelityRow]) -> str:
    """A Markdown table: one line per shape and activation kind, SQNR dB (rel. error %) per method."""
    methods = list(dict.fromkeys(r.method for r in rows))
    header = "| K->N | activations | " + " | ".join(methods) + " |"
    lines = [header, "|" + "---|" * (2 + len(methods))]
    groups: dict[tuple[int, int, str], dict[str, FidelityRow]] = {}
    for r in rows:
        groups.setdefault((r.k, r.n, r.kind), {})[r.method] = r
    for (k, n, kind), per in groups.items():
        cells = [f"{per[mt].sqnr_db:.1f} ({100 * per[mt].rel_error:.2f}%)" if mt in per else "-" for mt in methods]
        lines.append(f"| {k}->{n} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_as_dicts(rows: list[FidelityRow]) -> list[dict]:
    return [asdict(r) for r in rows]
