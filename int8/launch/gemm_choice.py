"""Which large-M GEMM kernel runs a shape on Hopper: the Triton TMA kernel (autotuned) or the Gluon one.

Both give the same bits (same int32 products, same fp32 epilogue), so the choice is speed only, and it is made by
timing, once per shape key, the way the configs of each kernel are ranked (:func:`tuning.sustained_bench`): the
TMA kernel with its autotuned config against each :data:`gluon_gemm.CONFIGS` entry. The Gluon kernel won every
Flux shape by 14-19% on an H100, but a shape with fewer output tiles than SMs can favour the TMA kernel's smaller
tiles, and timing settles it without a threshold to maintain.

A Gluon config that fails to compile is logged once and never tried again in this process; the TMA kernel then runs.
Each decision is kept on disk (:mod:`tuning_cache`, ``gemm_choice``): a new process reads it instead of timing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch

from .. import compat
from ..log_once import exception_line
from . import tuning_cache
from .fast_launch import recording_paused
from .host import device_index, is_capturing
from .tuning import sustained_bench

log = logging.getLogger(__name__)

_BuildError = compat.triton_build_error()

if compat.gluon_api() is not None:
    from . import gluon_gemm
else:  # a Triton without (this shape of) Gluon's Hopper API: the TMA kernel only (compat.gluon() says why, once)
    gluon_gemm = None


def _gluon_json(cfg: object) -> list | None:
    return None if cfg is None else list(cfg)  # a GluonConfig's fields; None: the TMA kernel

__all__ = ["choose", "launch_large"]

_UNDECIDED = object()

_choices: dict[Hashable, object | None] = {}  # shape key -> the Gluon config to run, or None for the TMA kernel
_broken: set[object] = set()  # Gluon configs that failed to compile
_on_disk = (tuning_cache.Table("gemm_choice", (None, *gluon_gemm.CONFIGS), encode=_gluon_json)
            if gluon_gemm is not None else None)


def launch_large(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor,
                 bias_arg: torch.Tensor, has_bias: bool, key: Hashable, launch_tma: Callable[[], None]) -> None:
    """Run the int8 GEMM of a TMA-eligible call (``launch.gemm.int8_gemm_dequant``'s operands) with the kernel
    chosen for ``key``; ``launch_tma`` runs the TMA kernel on the same operands."""
    cfg = _choices.get(key, _UNDECIDED)
    if cfg is _UNDECIDED:
        if gluon_gemm is None or not gluon_gemm.supported(a, c):
            _choices[key] = cfg = None
        else:
            dev = device_index(a.device)
            cfg = _on_disk.get(key, dev)
            if cfg is not tuning_cache.MISS:
                _choices[key] = cfg
            else:
                cfg = choose(key, launch_tma,
                             lambda g: gluon_gemm.gluon_gemm_dequant(a, xs, b, ws, bias_arg, has_bias, c, g),
                             gluon_gemm.CONFIGS)
                if key in _choices:  # decided (not inside a capture)
                    _on_disk.put(key, cfg, dev)
    if cfg is None:
        launch_tma()
    else:
        gluon_gemm.gluon_gemm_dequant(a, xs, b, ws, bias_arg, has_bias, c, cfg)


def choose(key: Hashable, run_tma: Callable[[], None], run_gluon: Callable[[object], None],
           configs: tuple[object, ...]) -> object | None:
    """Decide (first call per ``key``) and return the Gluon config to run, or None for the TMA kernel. Inside a CUDA
    graph capture nothing is timed: an undecided key runs the TMA kernel and stays undecided."""
    if key in _choices:
        return _choices[key]
    if is_capturing():
        return None
    with recording_paused():  # the trial runs are not part of a recorded eager call
        run_tma()  # its autotuning, on the first call of a shape
        best, best_ms = None, sustained_bench(run_tma)
        timings = {"triton tma": best_ms}
        for cfg in configs:
            if cfg in _broken:
                continue
            try:
                ms = sustained_bench(lambda cfg=cfg: run_gluon(cfg))
            except (_BuildError, RuntimeError, TypeError, AttributeError) as exc:  # does not build or launch here
                _broken.add(cfg)
                log.warning("int8 GEMM: the Gluon kernel config %s does not build here (%s); using the Triton TMA "
                            "kernel instead", cfg, exception_line(exc))
                continue
            timings[str(cfg)] = ms
            if ms < best_ms:
                best, best_ms = cfg, ms
        _choices[key] = best
        log.info("int8 GEMM %s: %s (sustained ms per call: %s)", key, "gluon " + str(best) if best else "triton tma",
                 {k: round(v, 4) for k, v in timings.items()})
    torch.cuda.synchronize()
    return best
