"""Host side of the warp-specialized Gluon GEMM (device code: :mod:`int8.kernels.gluon_gemm`): shared-memory
layouts, Gluon TMA descriptors and the direct launch. Only sm_90 and 16-bit outputs (see the kernel module)."""

from __future__ import annotations

import functools

import torch

from .. import compat
from ..kernels.gluon_gemm import CONFIGS, WORKER_REGS, GluonConfig, _int8_gemm_ws_kernel, gl
from .fast_launch import CompiledLauncher
from .host import alignment_bits, capability, cdiv, descriptor, device_index, sm_count

__all__ = ["GluonConfig", "CONFIGS", "supported", "gluon_gemm_dequant"]

_launch = CompiledLauncher(_int8_gemm_ws_kernel)
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


@functools.cache
def _layouts(cfg: GluonConfig, out_dtype: torch.dtype) -> tuple[object, object, object]:
    return (gl.NVMMASharedLayout.get_default_for([cfg.block_m, cfg.block_k], gl.int8),
            gl.NVMMASharedLayout.get_default_for([cfg.block_n, cfg.block_k], gl.int8),
            gl.NVMMASharedLayout.get_default_for([cfg.block_m, cfg.block_n // cfg.epilogue_split],
                                                 _GL_DTYPES[out_dtype]))


def supported(a: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether this kernel may run the call: an sm_90 GPU (wgmma: not Blackwell), the Gluon feature on
    (:func:`compat.gluon`: the Triton release it was written and measured against, ``INT8_W8A8_NO_GLUON`` unset),
    a 16-bit output with 16-byte aligned rows (the caller has checked A and B)."""
    return (capability(device_index(a.device))[0] == 9 and compat.gluon()
            and c.dtype in _GL_DTYPES and c.stride(0) % 8 == 0 and c.data_ptr() % 16 == 0)


def gluon_gemm_dequant(a: torch.Tensor, xs: torch.Tensor, b: torch.Tensor, ws: torch.Tensor, bias_arg: torch.Tensor,
                       has_bias: bool, c: torch.Tensor, cfg: GluonConfig) -> None:
    """Write ``c [M, N] = (a [M,K] int8 @ b [N,K]^T) * xs[M] * ws[N] (+ bias[N])`` (flat fp32 ``xs``/``ws``;
    ``bias_arg`` any tensor when ``has_bias`` is False)."""
    m, k = a.shape
    n = b.shape[0]
    dev = device_index(a.device)
    la, lb, lc = _layouts(cfg, c.dtype)
    # (descriptor: without from_tensor's per-call validation, ~3.5 us each; hopper_tma_ok and supported() hold)
    descs = (descriptor(a, [cfg.block_m, cfg.block_k], la), descriptor(b, [cfg.block_n, cfg.block_k], lb),
             descriptor(c, [cfg.block_m, cfg.block_n // cfg.epilogue_split], lc))
    programs = min(sm_count(dev), cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n))
    # Specialization facts (see fast_launch): each of M, N, K (also the descriptors' shapes and strides) is 1, a
    # multiple of 16 or neither; which scale/bias pointers are 16-byte aligned; the descriptors' block types are
    # fixed by cfg and the output dtype.
    # (The grid size is not compiled in: one binary serves every tile count.)
    key = (cfg, c.dtype, has_bias, bias_arg.dtype, tuple((v == 1, v % 16 == 0) for v in (m, n, k)),
           alignment_bits(xs, ws, bias_arg))
    _launch(key, dev, (programs, 1, 1), (*descs, xs, ws, bias_arg, m, n, k, cfg.stages, cfg.epilogue_split, has_bias,
                                         WORKER_REGS),
            cfg.warps, 1, maxnreg=cfg.maxnreg)

