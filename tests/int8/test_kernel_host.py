"""Host helpers of the kernel launchers (int8/kernels/host.py): CPU only."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from comfy_int8_w8a8.int8.launch.host import alignment_bits, cdiv, descriptor, next_power_of_2


@pytest.mark.parametrize("b", [1, 7, 16, 128])
def test_cdiv_matches_ceil(b: int) -> None:
    for a in range(0, 300):
        assert cdiv(a, b) == math.ceil(a / b)


def test_next_power_of_2() -> None:
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 4, 5, 12, 16, 17, 3072, 16384)] == \
        [1, 1, 2, 4, 4, 8, 16, 16, 32, 4096, 16384]


def test_next_power_of_2_matches_triton() -> None:
    triton = pytest.importorskip("triton", reason="Triton not installed: the reference for this check")
    for n in range(1, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n)


def test_alignment_bits_tell_every_pattern_apart() -> None:
    base = torch.zeros(64, dtype=torch.bfloat16)
    aligned, off = base[:32], base[1:33]  # 2-byte offset: not 16-byte aligned
    assert base.data_ptr() % 16 == 0
    patterns = {alignment_bits(a, b) for a in (aligned, off) for b in (aligned, off)}
    assert patterns == {0b00, 0b01, 0b10, 0b11}
    assert alignment_bits(aligned, off) == 0b01


def test_descriptor_equals_validated_one() -> None:
    pytest.importorskip("triton", reason="Triton not installed: host TMA descriptors come from it")
    from triton.tools.tensor_descriptor import TensorDescriptor

    t = torch.zeros(64, 3072, dtype=torch.int8)
    fast, checked = descriptor(t, [64, 128]), TensorDescriptor.from_tensor(t, [64, 128])
    assert type(fast) is TensorDescriptor
    for f in dataclasses.fields(TensorDescriptor):
        got, want = getattr(fast, f.name), getattr(checked, f.name)
        if f.name == "base":
            assert got is want
        else:
            assert type(got) is type(want) and got == want
