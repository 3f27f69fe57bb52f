"""The harness of the compile-matrix tests (test_kernel_compile.py, test_attention_compile.py): Triton compiles a
kernel for a GPU arch through its JIT against a stand-in driver whose target is that arch (no GPU needed), and the
PTX is checked for the tensor-core instruction the arch should get. See test_kernel_compile.py for what is compiled
and why; both files run only with ``INT8_W8A8_COMPILE_MATRIX=1`` (.ci/triton_matrix.sh sets it per Triton version).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

FLAG = "INT8_W8A8_COMPILE_MATRIX"

COMPILE_MARKS = [
    pytest.mark.skipif(os.environ.get(FLAG) != "1", reason=f"compiles dozens of kernels per arch: set {FLAG}=1 "
                       "(.ci/triton_matrix.sh does, once per Triton version)"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 runs the interpreter, "
                       "which compiles nothing"),
]

ARCHS = (80, 86, 89, 90, 100, 120)
DTYPES = (torch.bfloat16, torch.float16)
# fp16 on one arch per MMA generation (sm_80 mma.sync, sm_90 wgmma, sm_100 tcgen05 / mma.sync, sm_120 consumer
# Blackwell); sm_86 and sm_89 build the same code as sm_80 for another ptxas target and shared-memory limit: bf16.
ARCH_DTYPES = [(a, d) for a in ARCHS for d in DTYPES if d == torch.bfloat16 or a not in (86, 89)]
# Largest shared memory one block may use (opt-in), bytes (CUDA C Programming Guide, compute capabilities table).
MAX_SHARED = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


def _triton_version() -> tuple[int, int]:
    from comfy_int8_w8a8.int8 import compat

    return compat.triton_version()


def _skip_unless_the_pack_compiles_here(arch: int) -> None:
    from comfy_int8_w8a8.int8 import compat

    version = _triton_version()
    if version < compat.MIN_TRITON:
        pytest.skip(f"Triton {version[0]}.{version[1]} is below the pack's floor {compat.MIN_TRITON}: the Triton "
                    "backend is unavailable there (auto runs torch_int_mm)")
    if arch >= 100 and version < compat.BLACKWELL_TRITON:
        pytest.skip(f"Triton {version[0]}.{version[1]} does not know sm_{arch} (its MMA lowering asserts "
                    f"'computeCapability not supported'); Blackwell needs Triton >= 3.3, which torch builds for "
                    "Blackwell (CUDA 12.8, torch >= 2.7) ship")


# --------------------------------------------------------------------------------------------- compiling for an arch
class _TargetDriver:
    """Triton's active driver as far as ``JITFunction.run(warmup=True)`` asks it: a device (one per arch, so the
    JIT's per-device caches never mix targets), a stream, and the target to compile for."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 1000 + self.arch

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> object:
        return self.target


@contextlib.contextmanager
def _compiling_for(arch: int) -> Iterator[None]:
    from triton.runtime import driver

    saved = dict(vars(driver))  # 3.2 keeps `active` as an attribute, later versions `_active`
    driver.set_active(_TargetDriver(arch))
    try:
        yield
    finally:
        vars(driver).clear()
        vars(driver).update(saved)


@dataclass
class Spec:
    """One launch as a launcher makes it: the @triton.jit kernel, its arguments (torch dtypes stand for tensors:
    Triton's MockTensor, 16-byte aligned like a fresh allocation), constexprs and launch options, and which MMA the
    compiled kernel must contain: None (no tl.dot), "int8", "float" (bf16/fp16) or "fp8" (e4m3), or a tuple of
    those for a kernel with several dots (each kind must be there)."""

    label: str
    kernel: object
    args: tuple
    constexprs: dict
    warps: int
    stages: int
    mma: str | tuple[str, ...] | None
    options: dict = field(default_factory=dict)


def compile_spec(spec: Spec, arch: int) -> object:
    with _compiling_for(arch):
        return spec.kernel.warmup(*spec.args, grid=(1,), num_warps=spec.warps, num_stages=spec.stages,
                                  **spec.constexprs, **spec.options)


_INT8_MMA = {"mma": r"mma\.sync\.aligned\.\S*\.s8", "wgmma": r"wgmma\.mma_async\S*\.s8", "tcgen05": r"tcgen05\.mma\S*kind::i8"}
_FLOAT_MMA = {"mma": r"mma\.sync\.aligned\.\S*\.(?:bf16|f16)", "wgmma": r"wgmma\.mma_async\S*\.(?:bf16|f16)",
              "tcgen05": r"tcgen05\.mma\S*kind::f16"}
_FP8_MMA = {"mma": r"mma\.sync\.aligned\.\S*\.e4m3\.e4m3", "wgmma": r"wgmma\.mma_async\S*\.e4m3\.e4m3",
            "tcgen05": r"tcgen05\.mma\S*kind::f8f6f4"}
_MMA_PATTERNS = {"int8": _INT8_MMA, "float": _FLOAT_MMA, "fp8": _FP8_MMA}


def asm_problems(spec: Spec, arch: int, compiled: object) -> list[str]:
    """What is wrong with the compiled kernel for ``arch``: its shared memory past the arch's limit, a tensor-core
    instruction of another generation, or no MMA of the expected kind where the kernel has a ``tl.dot``."""
    ptx = compiled.asm["ptx"]
    problems = []
    if "cubin" not in compiled.asm or not compiled.asm["cubin"]:
        problems.append("no cubin")
    if compiled.metadata.shared > MAX_SHARED[arch]:
        problems.append(f"shared memory {compiled.metadata.shared} B > sm_{arch}'s {MAX_SHARED[arch]} B")
    if arch != 90 and "wgmma" in ptx:
        problems.append("wgmma outside sm_90")
    if arch < 100 and "tcgen05" in ptx:
        problems.append(f"tcgen05 on sm_{arch}")
    allowed = ("mma", "wgmma") if arch == 90 else ("mma", "tcgen05") if arch >= 100 else ("mma",)
    for mma in (spec.mma,) if isinstance(spec.mma, str) else spec.mma or ():
        if not any(re.search(_MMA_PATTERNS[mma][kind], ptx) for kind in allowed):
            problems.append(f"no {mma} tensor-core MMA ({' / '.join(allowed)}) in the PTX")
    return problems


def _error_line(exc: BaseException) -> str:
    """``Type: message`` of the exception and its causes, first line of each (a CompilationError's message is the
    kernel source: its cause says what went wrong)."""
    parts = []
    while exc is not None and len(parts) < 3:
        text = str(exc).strip()
        parts.append(f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def check_all(specs: list[Spec], arch: int, over_shared_ok: bool = False) -> list[str]:
    """Compile each spec for ``arch``; fail listing every spec that does not compile or has :func:`asm_problems`.
    ``over_shared_ok``: an autotuned table, whose configs that do not fit are skipped at run time
    (OutOfResources), as long as one fits: returns those that do not."""
    import triton

    failures, too_big, fitting = [], [], 0
    for spec in specs:
        try:
            compiled = compile_spec(spec, arch)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below, with the config
            failures.append(f"{spec.label}: {_error_line(exc)}")
            continue
        problems = asm_problems(spec, arch, compiled)
        if over_shared_ok and problems and all(p.startswith("shared memory") for p in problems):
            too_big.append(f"{spec.label}: {problems[0]}")
            continue
        fitting += not problems
        failures += [f"{spec.label}: {p}" for p in problems]
    if over_shared_ok and specs and not fitting and not failures:
        failures.append("no config of the table fits: " + "; ".join(too_big))
    if failures:
        pytest.fail(f"Triton {triton.__version__}, sm_{arch}:\n  " + "\n  ".join(failures), pytrace=False)
    return too_big


# ---------------------------------------------------------------------------------- shared by the spec builders
def _pdl(arch: int) -> bool:
    from comfy_int8_w8a8.int8 import compat

    return arch >= 90 and compat.pdl()  # launch.host.supports_pdl with the arch's capability
