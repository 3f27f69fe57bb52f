"""Host side of the per-token activation quantization (device code: :mod:`int8.kernels.triton_quant`, the rotated
variant :mod:`int8.kernels.triton_quant_rotated`): launch shapes, launch keys and the launches.

Numerics follow :func:`int8.quantize.quantize_per_token` applied after :func:`int8.backends.base.prepare_activation`
(see the kernel modules).
"""

from __future__ import annotations

import torch

from ..hadamard import build_hadamard, check_group_size
from ..kernels.triton_quant import _quant_per_token_kernel
from ..kernels.triton_quant_common import INTERPRETED
from ..kernels.triton_quant_rotated import (
    ROT_BLOCK_M,
    ROT_ROW_MAX_K,
    ROT_WARPS,
    _rotated_blocks64_quant_kernel,
    _rotated_quant_kernel,
    _rotated_row_kernel,
    _rotated_row_quant_kernel,
)
from .fast_launch import CompiledLauncher, note_temporary
from .host import alignment_bits, cdiv, next_power_of_2, sm_count, supports_pdl

__all__ = ["quantize_per_token_triton", "launch_rotated", "rotate_rows_triton", "one_pass_rotation_fits",
           "one_pass_blocks64_fits", "rot_row_group_split", "one_pass_launch_shape",
           "smooth_operand", "can_trigger_dependents", "grid_sm_count", "spec_key"]


def smooth_operand(smooth: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The kernels' ``smooth_ptr`` argument: ``smooth`` in x's dtype and device, contiguous (rounded like the torch
    path), or x itself as a valid unused pointer when there is none."""
    return smooth.to(device=x.device, dtype=x.dtype).contiguous() if smooth is not None else x


def can_trigger_dependents(device_index: int | None) -> bool:
    """Whether a quant kernel on this device may signal a programmatically launched successor (sm_90+)."""
    return not INTERPRETED and supports_pdl(device_index)


def grid_sm_count(device_index: int | None) -> int:
    return 2 if INTERPRETED else sm_count(device_index)  # CPU tensors under the interpreter: any small grid


def spec_key(runtime_args: tuple, constexprs: tuple) -> tuple:
    """What the JIT specializes a compiled kernel on (see fast_launch): per tensor its dtype and 16-byte alignment,
    per integer whether it is 1, a multiple of 16, or beyond int32; constexprs by value."""
    spec = tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                 else (a == 1, a % 16 == 0, not -2**31 <= a < 2**31) for a in runtime_args)
    return spec, constexprs


def rot_row_group_split(groups: int) -> tuple[int, int]:
    """``(G_A, G_B)``: power-of-two group counts (each >= 16, the dot's minimum M; ``G_B`` 0 when unused) that
    cover ``groups`` with the least padding."""
    whole = max(16, next_power_of_2(groups))
    g_a = max(16, whole // 2)
    rest = groups - g_a
    if rest <= 0:
        return whole, 0
    g_b = max(16, next_power_of_2(rest))
    return (g_a, g_b) if g_a + g_b < whole else (whole, 0)


_rot_launch = CompiledLauncher(_rotated_quant_kernel)
_rot_row_launch = CompiledLauncher(_rotated_row_quant_kernel)
_rotate_only_launch = CompiledLauncher(_rotated_row_kernel)
_rot_blocks64_launch = CompiledLauncher(_rotated_blocks64_quant_kernel)


def one_pass_rotation_fits(k: int, group: int) -> bool:
    """Whether the one-pass rotation kernels take rows of ``k`` columns: whole 256-column groups, a row in registers."""
    return group <= 256 and k % 256 == 0 and k <= ROT_ROW_MAX_K


def one_pass_blocks64_fits(k: int, group: int) -> bool:
    """Whether the one-pass 64-column-block kernel quantizes rows of ``k`` columns: group 64 where K is not a whole
    number of 256-column groups (those take :func:`one_pass_rotation_fits`'s kernel), a row in registers."""
    return group == 64 and k % 64 == 0 and k % 256 != 0 and k <= ROT_ROW_MAX_K


def one_pass_launch_shape(k: int) -> tuple[int, int, int]:
    """(programs per SM, num_warps, num_stages) of the one-pass kernel's persistent grid for rows of ``k`` columns.

    H100, 4608 rows: 12 programs per SM and 4 warps (docs/results/quant_kernel_h100_s3_programs.json: 12 vs 8 per SM
    75.3 vs 77.9 us at K = 12288, 25.4 vs 26.5 at 3072); 3 stages (docs/results/quant_kernel_h100.json: faster than
    2 at every shape then). Several rows per program were tried (docs/results/probe_h100_s5.json) and lost at
    every shape: 2 rows 28.3 vs 26.3 us at 4608x3072, 4 rows 34.2."""
    return 12, 4, 3


def launch_rotated(x: torch.Tensor, smooth_arg: torch.Tensor, has_smooth: bool, group: int, q: torch.Tensor,
                   scale: torch.Tensor, config: tuple[int, ...] | None) -> None:
    """Quantize ``x`` after the block rotation into ``q`` / ``scale`` (see ``quantize_per_token_triton``).
    ``config``: ``(programs per SM, num_warps, num_stages)`` for the one-pass kernel (benchmarks)."""
    m, k = x.shape
    dev = x.device.index
    # build_hadamard caches per device (no host-to-device copy per call, CUDA-graph safe). In x's dtype: the
    # entries +-1/8 are exact in 16-bit, and half the bytes per load.
    h = build_hadamard(64, x.device, x.dtype)
    # One pass where a rotated row fits in registers: 256-column groups (the group is a constexpr), or 64-column
    # blocks where K is not a whole number of 256s; (launcher, groups per row, leading constexprs).
    one_pass = ((_rot_row_launch, k // 256, (group,)) if one_pass_rotation_fits(k, group) else
                (_rot_blocks64_launch, k // 64, ()) if one_pass_blocks64_fits(k, group) else None)
    if one_pass is not None:
        launcher, groups, lead = one_pass
        g_a, g_b = rot_row_group_split(groups)
        per_sm, warps, stages = config or one_pass_launch_shape(k)
        runtime = (x, smooth_arg, h, q, scale, m, k, x.stride(0), q.stride(0))
        constexprs = (*lead, has_smooth, g_a, g_b, INTERPRETED)
        grid = (min(m, grid_sm_count(dev) * per_sm), 1, 1)
        launcher(spec_key(runtime, constexprs + (warps, stages)), dev, grid, runtime + constexprs, warps, stages)
        return
    chunk_cols = 1024 if group >= 1024 else 256
    n_chunks = cdiv(k, chunk_cols)
    part = torch.empty((m, n_chunks), dtype=torch.float32, device=x.device)
    grid = (cdiv(m, ROT_BLOCK_M), n_chunks, 1)
    for quant in (False, True):
        runtime = (x, smooth_arg, h, q, scale, part, m, k, x.stride(0), q.stride(0), n_chunks)
        constexprs = (group, has_smooth, ROT_BLOCK_M, next_power_of_2(n_chunks), quant, INTERPRETED)
        _rot_launch(spec_key(runtime, constexprs), dev, grid, runtime + constexprs, ROT_WARPS, 3)


def rotate_rows_triton(x: torch.Tensor, smooth: torch.Tensor | None, group: int) -> torch.Tensor:
    """``(x * smooth) @ blockdiag(H_group)`` in x's dtype for a row-major ``x [M, K]`` on CUDA, in one launch (the
    few-rows W8A16 path's input transform): :func:`int8.backends.base.prepare_activation`'s result up to the fp32
    summation order. Needs :func:`one_pass_rotation_fits`; raises ValueError otherwise."""
    m, k = x.shape
    if x.stride(1) != 1 or not one_pass_rotation_fits(k, group):
        raise ValueError(f"rotate_rows_triton takes a row-major [M, K] input with K a multiple of 256 up to "
                         f"{ROT_ROW_MAX_K} and a group of at most 256: shape {tuple(x.shape)}, group {group}")
    out = torch.empty((m, k), dtype=x.dtype, device=x.device)
    note_temporary(out)  # the W8A16 kernel's input: a replayed eager plan allocates it per call
    if m == 0:
        return out
    smooth_arg = smooth_operand(smooth, x)
    dev = x.device.index
    g_a, g_b = rot_row_group_split(k // 256)
    per_sm, warps, stages = one_pass_launch_shape(k)
    runtime = (x, smooth_arg, build_hadamard(64, x.device, x.dtype), out, m, k, x.stride(0), out.stride(0))
    constexprs = (group, smooth is not None, g_a, g_b)
    _rotate_only_launch(spec_key(runtime, constexprs + (warps, stages)), dev,
                        (min(m, grid_sm_count(dev) * per_sm), 1, 1), runtime + constexprs, warps, stages)
    return out


_plain_launch = CompiledLauncher(_quant_per_token_kernel)


def _plain_launch_shape(k: int, m: int) -> tuple[int, int, int]:
    """(CHUNK, BLOCK_M, num_warps) for the plain kernel. A row up to 16384 columns is held in registers (x read
    once); a longer one is walked twice in 8192-column chunks, one row per program so it stays in L2 between them.
    About 64 elements per thread was fastest in an H100 sweep (docs/results/kernels_h100.md): more warps per
    program lost up to 20% at K = 5120 and 12288. A few rows (<= 64) get one row per program and 8 elements per
    thread: the kernel is pure latency there, and the GEMM waits for its last program
    (docs/results/few_rows_tune_h100_s5.json: 64x3072 with the GEMM, 10.53 us against 10.84)."""
    chunk = min(next_power_of_2(k), 16384)
    if k > chunk:
        return 8192, 1, 8
    if m <= 64:
        return chunk, 1, max(4, min(16, chunk // 512))
    block_m = max(1, 8192 // chunk)
    return chunk, block_m, max(4, min(16, chunk * block_m // 2048))


def _launch_plain(x: torch.Tensor, smooth_arg: torch.Tensor, has_smooth: bool, q: torch.Tensor,
                  scale: torch.Tensor, config: tuple[int, int, int] | None) -> None:
    m, k = x.shape
    chunk, block_m, warps = config or _plain_launch_shape(k, m)
    sx = x.stride(0)
    runtime = (x, smooth_arg, q, scale, m, k, sx, k)  # q is a fresh contiguous [m, k]
    constexprs = (chunk, has_smooth, block_m, k <= chunk, INTERPRETED, can_trigger_dependents(x.device.index))
    # What the JIT specializes on (see fast_launch), spelled out for this signature: the generic spec_key costs
    # microseconds per call, which an eager few-rows layer notices.
    key = (x.dtype, smooth_arg.dtype, alignment_bits(x, smooth_arg, q, scale), m == 1, m % 16 == 0, k, sx == 1,
           sx % 16 == 0, constexprs, warps)
    _plain_launch(key, x.device.index, (cdiv(m, block_m), 1, 1), runtime + constexprs, warps, 3)


def quantize_per_token_triton(
    x: torch.Tensor, smooth: torch.Tensor | None = None, hadamard_group: int = 0,
    config: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [M, K]`` (fp16/bf16/fp32, CUDA) per row after optional smoothing and block rotation.

    ``smooth``: ``[K]`` multiplier (any float dtype; rounded to x's dtype like the torch path).
    ``hadamard_group``: 0, 64, 256 or 1024 (must divide K). Returns ``(q int8 [M, K], scale fp32 [M, 1])``.
    ``config`` overrides the launch shape (benchmarks): ``(CHUNK, BLOCK_M, num_warps)`` for the plain kernel,
    ``(programs per SM, num_warps, num_stages)`` for the one-pass rotation kernel.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_per_token_triton expects a row-major 2-D input, got shape {tuple(x.shape)} "
                         f"with strides {x.stride()}.")
    m, k = x.shape
    if hadamard_group:
        check_group_size(hadamard_group, k)
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    note_temporary(q, scale)  # an eager plan of the layer allocates these per call (they are not its output)
    if m == 0:
        return q, scale
    smooth_arg = smooth_operand(smooth, x)
    if hadamard_group:
        launch_rotated(x, smooth_arg, smooth is not None, hadamard_group, q, scale, config)
    else:
        _launch_plain(x, smooth_arg, smooth is not None, q, scale, config)
    return q, scale
