"""The float64 weight fold (``rotate_weight``) takes the Kronecker-factored form; it must give the one-matrix
product bit for bit, so files converted before and after the change, and the loader's fold, stay identical."""

import pytest
import torch

from comfy_int8_w8a8.int8.hadamard import _hadamard_cpu, rotate_weight
from comfy_int8_w8a8.int8.quantize import quantize_per_channel, quantize_rotated_per_channel


def _one_matrix_fold(w: torch.Tensor, group: int) -> torch.Tensor:
    n, k = w.shape
    return (w.double().reshape(n, k // group, group) @ _hadamard_cpu(group)).reshape(n, k)


def _weight(dtype: torch.dtype, k: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, k, generator=g) * torch.logspace(-5, 1, k)[torch.randperm(k, generator=g)]
    w[:, 7] *= 300.0  # a salient input channel, as real checkpoints have
    w[3, 100:140] = 0.0
    return w.to(dtype)


@pytest.mark.parametrize("group", [16, 64, 256, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_factored_fold_of_16bit_weights_equals_the_one_matrix_product_bit_for_bit(group, dtype):
    w = _weight(dtype)
    assert torch.equal(rotate_weight(w, group), _one_matrix_fold(w, group))


@pytest.mark.parametrize("group", [64, 256, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_factored_fold_quantizes_to_the_same_int8_weights(group, dtype):
    # float32 checkpoints: 24-bit values spread over 6 decades can round in float64's last bit, the int8 weights
    # and scales come out the same.
    w = _weight(dtype, k=3072)
    folded, reference = rotate_weight(w, group), _one_matrix_fold(w, group)
    assert (folded - reference).abs().max() <= 1e-14 * reference.abs().max()  # float64 rounding, no more
    q, scale = quantize_per_channel(folded)
    q_ref, scale_ref = quantize_per_channel(reference)
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)
    assert torch.equal(quantize_rotated_per_channel(w.double(), group)[0], q_ref)


def test_factored_fold_is_its_own_inverse():
    w = _weight(torch.bfloat16, k=3072)
    assert torch.allclose(rotate_weight(rotate_weight(w, 256), 256), w.double(), rtol=0, atol=1e-12)


def test_float32_rotation_keeps_the_one_matrix_product():
    # The per-call float32 rotation is not factored (its rounding would change): it stays W @ H.
    w = _weight(torch.float32)
    expected = (w.reshape(48, -1, 64) @ _hadamard_cpu(64).float()).reshape(w.shape)
    assert torch.equal(rotate_weight(w, 64, torch.float32), expected)
