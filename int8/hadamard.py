"""Block Walsh-Hadamard rotation of the input dimension, the same transform as ComfyUI's ``convrot`` files.

ComfyUI (comfy-kitchen ``int8_utils``) uses the *regular* Hadamard matrix: Kronecker powers of the symmetric
4x4 ``[[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]``, normalized by ``sqrt(size)``. It is symmetric and
orthogonal (``H @ H = I``), so with ``W_rot = W @ H`` and ``x_rot = x @ H`` per group of ``size`` input
channels, ``x_rot @ W_rot.T == x @ W.T`` while the rotation spreads an outlier channel over the whole group.
Regular Hadamard matrices exist for sizes 4**k only: 64, 256 (ComfyUI's default) and 1024 are the useful ones.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["HADAMARD_GROUP_SIZES", "build_hadamard", "rotate_activation", "rotate_weight", "check_group_size"]

HADAMARD_GROUP_SIZES = (64, 256, 1024)

_H4 = ((1, 1, 1, -1), (1, 1, -1, 1), (1, -1, 1, 1), (-1, 1, 1, 1))


def check_group_size(group_size: int, in_features: int | None = None) -> None:
    """Raise ``ValueError`` if ``group_size`` is not a power of 4 >= 4, or does not divide ``in_features``."""
    if group_size < 4 or (group_size & (group_size - 1)) != 0 or round(math.log(group_size, 4)) != math.log(group_size, 4):
        raise ValueError(
            f"Hadamard group size must be a power of 4 (64, 256 or 1024, like ComfyUI's convrot), got {group_size}."
        )
    if in_features is not None and in_features % group_size != 0:
        raise ValueError(f"Hadamard group size {group_size} does not divide in_features {in_features}.")


@functools.cache
def _hadamard_cpu(size: int) -> torch.Tensor:
    check_group_size(size)
    h4 = torch.tensor(_H4, dtype=torch.float64)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    return h / math.sqrt(size)


_ON_DEVICE: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def build_hadamard(size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalized regular Hadamard matrix ``[size, size]`` (symmetric, orthogonal); do not modify it.

    Cached per (size, device, dtype): a host-to-device copy on every call is a synchronous transfer that stalls
    the CPU until the GPU queue drains (the small-batch path rotates in torch, once per modulation layer).
    Traced code reads the cache too, so dynamo guards on the entry: ``Backend.prepare_device_state`` fills it
    before the lazy compile traces, or the first step's graph would recompile once the entry appears.
    """
    key = (size, str(torch.device(device)), dtype)
    h = _ON_DEVICE.get(key)
    if h is None:
        h = _ON_DEVICE[key] = _hadamard_cpu(size).to(device=device, dtype=dtype)
    return h


def rotate_activation(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x @ blockdiag(H, ..., H)`` over the last dimension, in ``x``'s dtype (fp32 math for 16-bit inputs)."""
    k = x.shape[-1]
    check_group_size(group_size, k)
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    h = build_hadamard(group_size, x.device, compute)
    y = x.to(compute).reshape(-1, k // group_size, group_size) @ h
    return y.reshape(x.shape).to(x.dtype)


def rotate_weight(weight: torch.Tensor, group_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``W @ blockdiag(H, ...)`` for a ``[N, K]`` weight, computed in ``dtype``: float64 for the offline fold,
    float32 where it runs per call on a GPU (float64 runs at 1/64 of the float32 rate on consumer cards).

    float64 takes the Kronecker-factored form (:func:`_rotate_factored`): the same numbers with 8x fewer
    multiply-adds at group 256, which is what the loader's fold and a LoRA's requantization cost on a GPU with
    slow float64."""
    n, k = weight.shape
    check_group_size(group_size, k)
    if dtype == torch.float64 and group_size >= 16:
        return _rotate_factored(weight.to(dtype), group_size)
    h = build_hadamard(group_size, weight.device, dtype)
    return (weight.to(dtype).reshape(n, k // group_size, group_size) @ h).reshape(n, k)


def _rotate_factored(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``W @ blockdiag(H_g, ...)`` as ``H_a @ X @ H_b`` per group, ``X`` the group's ``g`` channels as ``[a, b]``.

    The regular Hadamard matrix is a Kronecker power of the 4x4 one, so ``H_g = H_a kron H_b`` for ``g = a * b``
    (both powers of 4), and ``x @ (H_a kron H_b) = H_a^T X H_b`` with ``H_a`` symmetric. That is ``2 (a + b)``
    multiply-adds per element instead of ``2 g`` (32 vs 256 at g = 256). Every entry is ``+-2^-m``, so for 16-bit
    weights each product and each partial sum is exact in float64 and the result equals the one-matrix product bit
    for bit (tested)."""
    n, k = weight.shape
    a = 4 ** (round(math.log(group_size, 4)) // 2)
    b = group_size // a
    x = weight.reshape(n * k // group_size, a, b)
    x = torch.matmul(x, build_hadamard(b, weight.device, weight.dtype))
    return torch.matmul(build_hadamard(a, weight.device, weight.dtype), x).reshape(n, k)
