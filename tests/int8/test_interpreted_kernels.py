"""The generic Triton kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``) against the references.

Run by ``.ci/triton_matrix.sh`` once per Triton minor version (CPU torch, no GPU): per-token quant, the two
rotation quant kernels, the pointer GEMM, split-K (W8A8 and W8A16) and the W8A16 GEMV, each launched here
directly through its ``@triton.jit`` object (``kernel[grid](...)`` on CPU tensors, configs chosen by this file), so
the test depends on the kernel bodies only, not on the host-side launchers. Small shapes: the interpreter runs
every program in Python. Skipped unless ``TRITON_INTERPRET=1`` and Triton is importable.

Bounds are the GPU tests' (tests/int8/test_triton_kernels.py): the plain quant is bit-exact, the rotation within
its fp32 summation-order bound and one int8 step, the GEMMs within the fp32 epilogue's roundings and one cast.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch

from comfy_int8_w8a8.int8 import build_hadamard, quantize_per_channel, rotate_activation
from comfy_int8_w8a8.int8.quantize import INT8_MAX, SCALE_FLOOR

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
    reason="runs the Triton kernels under Triton's CPU interpreter: needs TRITON_INTERPRET=1 and triton installed "
           "(.ci/triton_matrix.sh runs it once per Triton version)",
)

# ------------------------------------------------------------------------------------------ where the kernels live
# The one place naming the module of each @triton.jit kernel this file runs (fix the paths here if they move).
_PKG = "comfy_int8_w8a8.int8.kernels"
KERNEL_MODULES = {
    "_quant_per_token_kernel": f"{_PKG}.triton_quant",
    "_rotated_quant_kernel": f"{_PKG}.triton_quant_rotated",
    "_rotated_row_quant_kernel": f"{_PKG}.triton_quant_rotated",
    "_rotated_blocks64_quant_kernel": f"{_PKG}.triton_quant_rotated",
    "_rotated_row_kernel": f"{_PKG}.triton_quant_rotated",
    "_int8_gemm_kernel": f"{_PKG}.triton_gemm",
    "_split_k_kernel": f"{_PKG}.triton_splitk",
    "_gemv_kernel": f"{_PKG}.triton_gemv",
}


def _read_string_constexpr_annotations() -> None:
    """Triton 3.0 and 3.1's interpreter (GridExecutor) takes a parameter as constexpr only when its annotation
    normalizes to exactly ``"constexpr"``; the kernel modules use ``from __future__ import annotations``, so theirs
    are the string ``"tl.constexpr"``, and every constexpr would become a runtime scalar (``tl.arange`` then fails).
    The compiler (GPU) looks for ``"constexpr"`` in the string and is not affected. Normalize such strings the way
    later interpreters do; a no-op on Triton >= 3.2."""
    from triton.runtime import jit

    normalize = jit._normalize_ty
    if getattr(normalize, "_reads_string_constexpr", False):
        return

    def _normalize_ty(ty):  # noqa: ANN001, ANN202
        out = normalize(ty)
        return "constexpr" if isinstance(ty, str) and out.split(".")[-1] == "constexpr" else out

    _normalize_ty._reads_string_constexpr = True
    jit._normalize_ty = _normalize_ty


def _bool_store_masks() -> None:
    """Triton 3.9's interpreter computes ``row_mask[:, None] & (col0 < K)`` (an i1 block and an i1 scalar, in
    ``_store4`` of the chunked rotation kernel) as an int32 numpy array, and its C++ store then rejects the mask
    ("mask has unsupported dtype"; 3.8 accepted it). Compiled for sm_90 by the same Triton, the kernel builds
    (the mask is i1 there). Hand the store a bool mask, as the GPU has; a no-op where masks are bool already."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    store = builder.create_masked_store
    if getattr(store, "_bool_masks", False):
        return

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if mask.data.dtype != bool:
            mask = interpreter.TensorHandle(mask.data.astype(bool), mask.dtype)
        return store(self, ptrs, value, mask, *args, **kwargs)

    create_masked_store._bool_masks = True
    builder.create_masked_store = create_masked_store


def kernel(name: str) -> object:
    """The ``@triton.jit`` kernel ``name`` (an autotuned one unwrapped: the tests pick its config). Fails with
    the import error, and the Triton version, when its module does not import on this Triton."""
    import triton

    _read_string_constexpr_annotations()
    _bool_store_masks()
    try:
        module = importlib.import_module(KERNEL_MODULES[name])
    except Exception as e:  # noqa: BLE001 - reported as the failure
        pytest.fail(f"{KERNEL_MODULES[name]} does not import on Triton {triton.__version__}: "
                    f"{type(e).__name__}: {e}", pytrace=False)
    return getattr(module, name)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _p2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


# ---------------------------------------------------------------------------------------------------- references
def _acts(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(m, k) * 2
    x[:, ::97] *= 30  # outlier channels, as in diffusion transformers
    return x.to(dtype)


def _quantize_per_token_like_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_per_token` with the scale rounded as torch rounds it on CUDA, where the GPU tests compare the
    kernels with it bit for bit: ``absmax * fp32(1/127)`` (torch on CUDA divides by a Python scalar through its fp32
    reciprocal, and the kernels match that). Torch on the CPU divides exactly: at times one ulp away."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) * torch.tensor(1 / INT8_MAX)).clamp_(min=SCALE_FLOOR)
    return torch.round(xf / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def _weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = quantize_per_channel(torch.randn(n, k, dtype=torch.float64) / k**0.5)
    return q, s.float().reshape(-1).contiguous()


def _cast_step(ref: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    # fp32 epilogue (acc * xs * ws + bias: a few fp32 roundings) then one cast to dtype (half an ulp).
    b = bias.double().abs() if bias is not None else 0
    magnitude = (ref - (bias.double() if bias is not None else 0)).abs() + b
    return magnitude * 4 * torch.finfo(torch.float32).eps + ref.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny


def _w8a16_tol(x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype):
    # fp32 accumulation of exact products (K roundings of at most |x||Wq| each) times the scale, then the cast.
    k = x.shape[1]
    acc = (x.double().abs() @ wq.double().abs().t()) * ws.double()[None, :]
    return acc * k * torch.finfo(torch.float32).eps + ref.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny


DTYPES = [torch.bfloat16, torch.float16, torch.float32]

# Triton's interpreter (triton/runtime/interpreter.py, the same code in 3.0 through 3.9) keeps bfloat16 as raw
# uint16 numpy arrays: its fp32 <-> bf16 casts convert the bits (fp32 -> bf16 truncating, where the GPU rounds to
# nearest even), but ``create_dot`` runs np.matmul on the bf16 bit patterns as integers and an int8 -> bf16 cast
# (``astype(uint16)``) writes the integer's bits. So a kernel that feeds bf16 to tl.dot (the rotation, W8A16
# split-K) cannot be checked in bf16 here; the GPU tests cover it. fp16 and fp32 run.
BF16_DOT = pytest.param(torch.bfloat16, marks=pytest.mark.skip(
    reason="Triton's interpreter multiplies bf16 tl.dot operands as their uint16 bit patterns (create_dot) and "
           "casts int8 -> bf16 with astype(uint16): not the GPU's arithmetic; covered by the GPU tests"))


# ------------------------------------------------------------------------------------------- per-token quant
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,chunk,block_m,smooth", [
    (5, 300, 512, 2, False),   # whole row in registers, ragged row block
    (3, 1100, 256, 1, False),  # two passes over 256-column chunks, ragged last chunk
    (4, 200, 256, 4, True),    # smoothing
])
def test_quant_per_token_kernel_matches_quantize_per_token_exactly(m, k, chunk, block_m, smooth, dtype):
    fn = kernel("_quant_per_token_kernel")
    x = _acts(m, k, dtype)
    s_vec = (torch.rand(k) + 0.5).to(dtype) if smooth else None
    if smooth and dtype == torch.bfloat16:
        # Powers of two: x * s is exact, so its rounding to bf16 is too, whichever rounding mode (the interpreter
        # truncates fp32 -> bf16 where the GPU and torch round to nearest even; see BF16_DOT).
        s_vec = torch.exp2(torch.randint(-2, 3, (k,)).float()).to(dtype)
    q = torch.empty(m, k, dtype=torch.int8)
    scale = torch.empty(m, 1, dtype=torch.float32)
    fn[(_cdiv(m, block_m),)](x, s_vec if smooth else x, q, scale, m, k, x.stride(0), k,
                             CHUNK=chunk, HAS_SMOOTH=smooth, BLOCK_M=block_m, SINGLE_CHUNK=k <= chunk,
                             INTERPRETED=True, TRIGGER=False)
    q_ref, s_ref = _quantize_per_token_like_cuda(x * s_vec if smooth else x)
    assert torch.equal(scale, s_ref)
    assert torch.equal(q, q_ref)  # IEEE division and round-half-to-even, like torch.round


# ------------------------------------------------------------------------------------------- rotation quant
def _check_rotated(x: torch.Tensor, group: int, q: torch.Tensor, s: torch.Tensor) -> None:
    m, _ = x.shape
    q_ref, s_ref = _quantize_per_token_like_cuda(rotate_activation(x, group))
    # Different fp32 summation order than torch's matmul (see the GPU test): the scale within the rotation's
    # bound over 127 plus one ulp of x's dtype, an int8 value within one step.
    group_abs = x.float().abs().reshape(m, -1, group).sum(-1) / group**0.5
    rot_err = 2 * group * torch.finfo(torch.float32).eps * group_abs.amax(-1, keepdim=True)
    assert ((s - s_ref).abs() <= rot_err / 127 + s_ref * torch.finfo(x.dtype).eps).all()
    assert (q.int() - q_ref.int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", [BF16_DOT, torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,group", [(5, 768, 64), (3, 640, 64), (17, 512, 256), (2, 2048, 1024)])
def test_rotated_quant_kernel_matches_rotate_activation(m, k, group, dtype):
    # The chunked kernel: an absmax pass over (row block, column chunk) programs, then the quant pass.
    fn = kernel("_rotated_quant_kernel")
    x = _acts(m, k, dtype)
    h = build_hadamard(64, "cpu", dtype)
    q = torch.empty(m, k, dtype=torch.int8)
    scale = torch.empty(m, 1, dtype=torch.float32)
    n_chunks = _cdiv(k, 1024 if group >= 1024 else 256)
    part = torch.empty(m, n_chunks, dtype=torch.float32)
    block_m = 16
    for quant in (False, True):
        fn[(_cdiv(m, block_m), n_chunks)](x, x, h, q, scale, part, m, k, x.stride(0), k, n_chunks,
                                          GROUP=group, HAS_SMOOTH=False, BLOCK_M=block_m, NCHUNK_P2=_p2(n_chunks),
                                          QUANT=quant, INTERPRETED=True, num_warps=4)
    _check_rotated(x, group, q, scale)


@pytest.mark.parametrize("dtype", [BF16_DOT, torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,group,g_a,g_b,programs", [
    (3, 1024, 256, 16, 0, 2),    # 4 groups padded to 16; programs walk several rows
    (2, 5120, 64, 16, 16, 2),    # 20 groups in 16 + 16
    (4, 768, 256, 16, 0, 4),
])
def test_rotated_row_quant_kernel_matches_rotate_activation(m, k, group, g_a, g_b, programs, dtype):
    # The one-pass kernel (K % 256 == 0): persistent programs, a row's groups as the dots' M dimension.
    fn = kernel("_rotated_row_quant_kernel")
    x = _acts(m, k, dtype)
    h = build_hadamard(64, "cpu", dtype)
    q = torch.empty(m, k, dtype=torch.int8)
    scale = torch.empty(m, 1, dtype=torch.float32)
    fn[(min(m, programs),)](x, x, h, q, scale, m, k, x.stride(0), k, GROUP=group, HAS_SMOOTH=False, G_A=g_a,
                            G_B=g_b, INTERPRETED=True, num_warps=4)
    _check_rotated(x, group, q, scale)


@pytest.mark.parametrize("dtype", [BF16_DOT, torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,g_a,g_b,programs", [
    (3, 2432, 32, 16, 2),  # SD3.5-large's K: 38 blocks of 64 in 32 + 16, programs walk several rows
    (2, 320, 16, 0, 2),    # 5 blocks padded to 16
])
def test_rotated_blocks64_quant_kernel_matches_rotate_activation(m, k, g_a, g_b, programs, dtype):
    # The one-pass kernel for 64-column groups when K % 256 != 0: a row's 64-blocks as the dot's M dimension.
    fn = kernel("_rotated_blocks64_quant_kernel")
    x = _acts(m, k, dtype)
    h = build_hadamard(64, "cpu", dtype)
    q = torch.zeros(m, k, dtype=torch.int8)
    scale = torch.empty(m, 1, dtype=torch.float32)
    fn[(min(m, programs),)](x, x, h, q, scale, m, k, x.stride(0), k, HAS_SMOOTH=False, G_A=g_a, G_B=g_b,
                            INTERPRETED=True, num_warps=4)
    _check_rotated(x, 64, q, scale)


@pytest.mark.parametrize("dtype", [BF16_DOT, torch.float16])
@pytest.mark.parametrize("m,k,group,g_a,g_b,programs,smooth", [
    (1, 3072, 256, 16, 0, 1, False),  # Flux's 3072: 12 groups padded to 16, one row (the modulation layers)
    (3, 5120, 64, 16, 16, 2, True),   # 20 groups in 16 + 16, smoothing, programs walk several rows
    (2, 768, 256, 16, 0, 2, True),
])
def test_rotated_row_kernel_matches_prepare_activation(m, k, group, g_a, g_b, programs, smooth, dtype):
    # The rotation alone (the few-rows W8A16 path's input): the torch path's values up to the fp32 summation
    # order, i.e. within the rotation's fp32 bound plus one rounding to x's dtype.
    from comfy_int8_w8a8.int8.backends.base import prepare_activation
    from comfy_int8_w8a8.int8.weights import Int8Weights

    fn = kernel("_rotated_row_kernel")
    x = _acts(m, k, dtype)
    s = torch.rand(k) + 0.5 if smooth else None
    h = build_hadamard(64, "cpu", dtype)
    out = torch.full((m, k), float("nan"), dtype=dtype)
    fn[(min(m, programs),)](x, s.to(dtype) if smooth else x, h, out, m, k, x.stride(0), k, GROUP=group,
                            HAS_SMOOTH=smooth, G_A=g_a, G_B=g_b, num_warps=4)
    ref = prepare_activation(x, Int8Weights(torch.zeros(1, k, dtype=torch.int8), torch.ones(1), None, group, s))
    xs = x.float() * s.to(dtype).float() if smooth else x.float()
    group_abs = xs.abs().reshape(m, -1, group).sum(-1) / group**0.5
    bound = 2 * group * torch.finfo(torch.float32).eps * group_abs.amax(-1, keepdim=True)
    tol = bound + ref.float().abs() * torch.finfo(dtype).eps
    assert not out.isnan().any()
    assert ((out.float() - ref.float()).abs() <= tol).all()
    assert (out == ref).float().mean() > 0.9  # mostly the same bits: a different order, not a different sum


@pytest.mark.parametrize("k,group,kernel", [
    (2432, 64, "blocks64"),   # SD3.5-large: 38 blocks of 64, K % 256 != 0
    (3072, 64, "row"),        # whole 256-column groups take the one-pass group kernel, any group <= 256
    (3072, 256, "row"),
    (4096, 1024, "chunked"),  # 1024-groups: the chunked kernel
    (20480, 256, "chunked"),  # a row past the registers
])
def test_rotation_launch_picks_the_one_pass_kernel_where_it_fits(monkeypatch, k, group, kernel):
    from comfy_int8_w8a8.int8.launch import quant

    launched = []
    for name, launcher in (("row", "_rot_row_launch"), ("blocks64", "_rot_blocks64_launch"),
                           ("chunked", "_rot_launch")):
        monkeypatch.setattr(quant, launcher, lambda *a, name=name, **kw: launched.append(name))
    monkeypatch.setattr(quant, "grid_sm_count", lambda dev: 132)
    x = torch.zeros(4, k, dtype=torch.bfloat16)
    quant.launch_rotated(x, x, False, group, torch.empty(4, k, dtype=torch.int8), torch.empty(4, 1), None)
    assert set(launched) == {kernel}


# ------------------------------------------------------------------------------------------------- pointer GEMM
def _pointer_configs() -> list:
    kernel("_int8_gemm_kernel")  # (imports its module, or fails naming the Triton version)
    gemm = importlib.import_module(KERNEL_MODULES["_int8_gemm_kernel"])
    return list(gemm.POINTER_CONFIGS_AMPERE) + list(gemm.POINTER_CONFIGS_HOPPER)


@pytest.mark.parametrize("config_index", range(8))
@pytest.mark.parametrize("out_dtype,bias", [(torch.bfloat16, True), (torch.float32, False)])
def test_pointer_gemm_kernel_matches_float64_reference(config_index, out_dtype, bias):
    fn = kernel("_int8_gemm_kernel")
    configs = _pointer_configs()
    if config_index >= len(configs):
        pytest.skip(f"the pointer GEMM has {len(configs)} configs (Ampere and Hopper tables)")
    cfg = configs[config_index]
    kw = cfg.kwargs
    m, n, k = 70, 150, 200  # ragged M, N and a K tail for every config
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    xs = torch.rand(m) + 0.5
    ws = torch.rand(n) * 1e-3
    bias_t = torch.randn(n, dtype=torch.bfloat16) if bias else None
    c = torch.empty(m, n, dtype=out_dtype)
    grid = (_cdiv(m, kw["BLOCK_M"]) * _cdiv(n, kw["BLOCK_N"]),)
    fn[grid](a, b, c, xs, ws, bias_t if bias else xs, m, n, k, a.stride(0), b.stride(0), c.stride(0),
                   min(max(_p2(m), 16), 16384), HAS_BIAS=bias, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                   **kw)
    ref = (a.double() @ b.double().t()) * xs.double()[:, None] * ws.double()[None, :]
    if bias:
        ref = ref + bias_t.double()
    assert ((c.double() - ref).abs() <= _cast_step(ref, bias_t, out_dtype)).all()


# ------------------------------------------------------------------------------------------------------ split-K
def _split_k(x, wq, xs, ws, bias, out_dtype, block_m, block_n, block_k, split):  # noqa: ANN001, ANN202
    fn = kernel("_split_k_kernel")
    m, k = x.shape
    n = wq.shape[0]
    int8_x = xs is not None
    c = torch.empty(m, n, dtype=out_dtype)
    tiles = _cdiv(n, block_n) * _cdiv(m, block_m)
    part = torch.full((tiles * split * block_m * block_n,), 7, dtype=torch.int32 if int8_x else torch.float32)
    count = torch.zeros(tiles, dtype=torch.int32)
    fn[(_cdiv(n, block_n), _cdiv(m, block_m), split)](
        x, wq, c, xs if int8_x else ws, ws, bias if bias is not None else ws, part, count, m, n, k, x.stride(0),
        wq.stride(0), c.stride(0), HAS_BIAS=bias is not None, X_INT8=int8_x, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, SPLIT_K=split, PDL=False, num_warps=4, num_stages=3)
    assert (count == 0).all(), "the last split to arrive re-arms its tile's counter"
    return c


@pytest.mark.parametrize("split", [1, 2, 4])
@pytest.mark.parametrize("m,n,k,block_m,block_n,block_k", [(5, 100, 300, 16, 32, 64), (33, 64, 520, 32, 32, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_split_k_w8a8_matches_int8_reference(m, n, k, block_m, block_n, block_k, split, bias):
    x = _acts(m, k, torch.bfloat16)
    xq, xs = _quantize_per_token_like_cuda(x)
    wq, ws = _weight(n, k)
    bias_t = torch.randn(n, dtype=torch.bfloat16) if bias else None
    c = _split_k(xq, wq, xs.reshape(-1).contiguous(), ws, bias_t, torch.bfloat16, block_m, block_n, block_k, split)
    ref = (xq.double() @ wq.double().t()) * xs.double() * ws.double()[None, :]
    if bias:
        ref = ref + bias_t.double()
    assert ((c.double() - ref).abs() <= _cast_step(ref, bias_t, torch.bfloat16)).all()
    if split > 1:  # int32 partials are exact: the same bits as one pass
        assert torch.equal(c, _split_k(xq, wq, xs.reshape(-1).contiguous(), ws, bias_t, torch.bfloat16, block_m,
                                       block_n, block_k, 1))


@pytest.mark.parametrize("dtype", [BF16_DOT, torch.float16])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("m,n,k", [(3, 100, 300), (20, 64, 257)])
def test_split_k_w8a16_matches_dequantized_linear(m, n, k, split, dtype):
    x = _acts(m, k, dtype)
    wq, ws = _weight(n, k)
    bias_t = torch.randn(n, dtype=dtype)
    c = _split_k(x, wq, None, ws, bias_t, dtype, 16, 32, 64, split)
    ref = x.double() @ wq.double().t() * ws.double()[None, :] + bias_t.double()
    assert c.dtype == dtype
    assert ((c.double() - ref).abs() <= _w8a16_tol(x, wq, ws, ref, dtype)).all()


# ----------------------------------------------------------------------------------------------------- W8A16 GEMV
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_gemv_kernel_matches_dequantized_linear(rows, dtype, bias):
    fn = kernel("_gemv_kernel")
    n, k = 100, 600  # ragged last 32-channel block, K tail past 2 x 256
    x = _acts(rows, k, dtype)
    wq, ws = _weight(n, k)
    bias_t = torch.randn(n, dtype=dtype) if bias else None
    c = torch.empty(rows, n, dtype=dtype)
    fn[(_cdiv(n, 32),)](x, wq, c, ws, bias_t if bias else ws, n, k, x.stride(0), wq.stride(0), c.stride(0),
                        HAS_BIAS=bias, ROWS=rows, BLOCK_N=32, BLOCK_K=256, STAGES=4, num_warps=4)
    ref = x.double() @ wq.double().t() * ws.double()[None, :]
    if bias:
        ref = ref + bias_t.double()
    assert ((c.double() - ref).abs() <= _w8a16_tol(x, wq, ws, ref, dtype)).all()
