"""The one gate for Triton and GPU features: each version- or device-specific fact is detected here, once, with a
fallback that the rest of the pack takes when the fact is missing or switched off.

Importing this module never imports Triton (a CPU user without Triton imports the whole engine); every probe
imports it lazily, on first use, and caches the answer. Code elsewhere asks these functions; it never imports the
feature itself.

Facts and the fallback of each:

- Triton present, at least :data:`MIN_TRITON` (:func:`triton_version`, :func:`triton_unavailable_reason`): else the
  ``triton`` backend is unavailable and ``auto`` picks ``torch_int_mm``, saying why.
- Host TMA descriptors (``triton.tools.tensor_descriptor``, Triton >= 3.4; :func:`host_tma`): else the Hopper GEMM
  runs the pointer kernel. Off with ``INT8_W8A8_NO_TMA=1``.
- Programmatic dependent launch (``gdc_wait`` / ``gdc_launch_dependents`` and the launcher's PDL flag;
  :func:`pdl`): else kernels launch in plain stream order. Off with ``INT8_W8A8_NO_PDL=1``.
- Gluon with the Hopper names the warp-specialized GEMM uses, on the Triton release it was tested on
  (:data:`TESTED_TRITON`; :func:`gluon`): else the Triton TMA kernel runs every large-M shape. Off with
  ``INT8_W8A8_NO_GLUON=1``.
- The compiled-kernel launcher layout the direct launches and the eager-plan replays rely on (Triton 3.6's;
  :func:`direct_launch`, and per kernel the readers of Triton's launcher in :mod:`.launcher`): else launches go
  through ``compiled.run`` and multi-launch plans are not built. Off with ``INT8_W8A8_NO_DIRECT_LAUNCH=1``.
- ``INT8_W8A8_ARCH=sm_80|sm_86|sm_89|sm_90|sm_100|sm_120``: the capability this pack believes the GPU has
  (:func:`capability`): routing and config tables pick as on that arch; Triton still compiles for the real chip.
  For forced-path tests of the non-Hopper paths on a Hopper GPU.
- fp8 e4m3 tensor-core dots for the attention's ``P . V`` (sm_89+, ``tl.float8e4nv``, ``torch.float8_e4m3fn``;
  :func:`fp8_attention_unavailable_reason`): else ``P . V`` runs in 16 bits. Off with
  ``INT8_W8A8_NO_FP8_ATTENTION=1``.

Each fallback logs one line, once, saying what it fell back from and why. Tests change the environment or fake a
probe, then call :func:`reset`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import types
from collections.abc import Callable

import torch

from ..log_once import log_once

__all__ = ["MIN_TRITON", "TESTED_TRITON", "TMA_TRITON", "NO_GLUON", "NO_TMA", "NO_PDL", "NO_DIRECT_LAUNCH", "ARCH",
           "triton_version", "triton_release", "triton_unavailable_reason", "cuda_int8_unavailable_reason",
           "capability", "arch_override", "host_tma", "tensor_descriptor_class", "pdl", "gdc_functions", "gluon",
           "gluon_api", "fp8_attention_unavailable_reason", "direct_launch", "eager_plans", "reset"]

log = logging.getLogger("comfy_int8_w8a8")

# The oldest Triton the kernels are written for: ``triton.autotune(do_bench=...)`` (the sustained-clock tuning of
# the GEMMs, launch/tuning.py) and ``compiled.run``'s argument order (launch/fast_launch.py) are Triton 3.2's.
MIN_TRITON = (3, 2)
TRITON_MIN_CAPABILITY = (8, 0)  # Ampere: below it torch_int_mm (cuBLAS) runs instead
BLACKWELL_TRITON = (3, 3)  # the first Triton that compiles for sm_100 / sm_120
TMA_TRITON = (3, 4)  # host ``TensorDescriptor`` (triton.tools.tensor_descriptor) and in-kernel descriptor loads
TESTED_TRITON = "3.6."  # the release the Gluon kernel and the direct-launch layout were written and measured on

NO_GLUON = "INT8_W8A8_NO_GLUON"
NO_TMA = "INT8_W8A8_NO_TMA"
NO_PDL = "INT8_W8A8_NO_PDL"
NO_DIRECT_LAUNCH = "INT8_W8A8_NO_DIRECT_LAUNCH"
NO_EAGER_PLANS = "INT8_W8A8_NO_EAGER_PLANS"
NO_FP8_ATTENTION = "INT8_W8A8_NO_FP8_ATTENTION"
FP8_MIN_CAPABILITY = (8, 9)  # Ada: the first GPUs with fp8 tensor cores
FP8_SM120_TRITON = (3, 5)  # the first Triton with an fp8 MMA for sm_120 (consumer Blackwell)
ARCH = "INT8_W8A8_ARCH"


def _switched_off(name: str) -> bool:
    """Whether the environment switch ``name`` is set (anything but empty or ``0``)."""
    return os.environ.get(name, "").strip() not in ("", "0")


def _fallback(feature: str, reason: str, instead: str) -> None:
    log_once(log, logging.INFO, f"INT8 W8A8: {feature} off ({reason}); {instead}.")


# ----------------------------------------------------------------------------------------------------- Triton itself
def _parse_version(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@functools.cache
def _installed_triton() -> str | None:
    """``triton.__version__``, or None when Triton is not installed (or does not import)."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except ImportError as exc:  # installed but broken (e.g. a wheel for another Python): the same as absent
        log_once(log, logging.WARNING, f"INT8 W8A8: 'triton' is installed but does not import ({exc}).")
        return None
    return triton.__version__


def triton_version() -> tuple[int, int] | None:
    """(major, minor) of the installed Triton, or None without one."""
    text = _installed_triton()
    return _parse_version(text) if text is not None else None


def triton_release() -> str | None:
    """The installed Triton's full version string (``"3.6.0"``), or None without one: part of what a tuned kernel
    choice was measured on (launch/tuning_cache.py)."""
    return _installed_triton()


def arch_override() -> tuple[int, int] | None:
    """The capability ``INT8_W8A8_ARCH`` states (``sm_89`` -> (8, 9), ``sm_100`` -> (10, 0)), or None when unset.
    Raises ValueError on a value that is not ``sm_<major><minor>``."""
    text = os.environ.get(ARCH, "").strip().lower()
    if not text:
        return None
    match = re.fullmatch(r"sm_?(\d+)(\d)a?", text)
    if match is None:
        raise ValueError(f"{ARCH}={text!r}: expected a CUDA arch such as sm_80, sm_89, sm_90 or sm_120.")
    return int(match.group(1)), int(match.group(2))


def capability(device: torch.device | int | None = None) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device as this pack sees it: ``INT8_W8A8_ARCH`` when set, else
    the device's own. Not cached (launch/host.py caches it per device for the launchers)."""
    forced = arch_override()
    return forced if forced is not None else tuple(torch.cuda.get_device_capability(device))


def cuda_int8_unavailable_reason(device: torch.device) -> str | None:
    """Why the CUDA ``device`` cannot run int8 tensor-core GEMMs, or None when it can (sm_75 Turing and newer)."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = capability(device)
    if (major, minor) < (7, 5):
        return f"the GPU is sm_{major}{minor}; int8 tensor cores need sm_75 (Turing) or newer"
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can: not a CUDA device, no Triton, a GPU
    below :data:`TRITON_MIN_CAPABILITY` (sm_80), or a Triton older than :data:`MIN_TRITON`."""
    if device.type != "cuda":
        return f"Triton kernels run on CUDA GPUs only, the layer is on {device.type}"
    if _installed_triton() is None:
        return "the 'triton' package is not installed (pip install triton; on Windows: triton-windows)"
    reason = cuda_int8_unavailable_reason(device)
    if reason is not None:
        return reason
    major, minor = capability(device)
    if (major, minor) < TRITON_MIN_CAPABILITY:
        # Triton lowers an int8 dot on Turing to the sm_75 mma path, which these kernels were never verified on and
        # peer packs report wrong outputs from; cuBLAS's int8 GEMM is the tested path there.
        return (f"the GPU is sm_{major}{minor}; the pack's Triton kernels need sm_{TRITON_MIN_CAPABILITY[0]}"
                f"{TRITON_MIN_CAPABILITY[1]} (Ampere) or newer")
    version = triton_version()
    if version is None or version < MIN_TRITON:
        return (f"Triton {_installed_triton()} is older than the {MIN_TRITON[0]}.{MIN_TRITON[1]} these kernels "
                "need (pip install -U triton)")
    if major >= 10 and version < BLACKWELL_TRITON:
        # Triton 3.2 aborts the whole process (a C++ assertion in its matmul lowering) compiling for sm_100/sm_120
        # (tests/int8/test_kernel_compile.py), so those GPUs need a Triton that knows them.
        return (f"Triton {_installed_triton()} cannot compile for sm_{major}{minor} (Blackwell needs Triton "
                f"{BLACKWELL_TRITON[0]}.{BLACKWELL_TRITON[1]} or newer: pip install -U triton)")
    return None


# ---------------------------------------------------------------------------------------------------------- features
@functools.cache
def host_tma() -> bool:
    """Whether the Hopper TMA GEMM may build host tensor descriptors: Triton >= 3.4 with
    ``triton.tools.tensor_descriptor``, and ``INT8_W8A8_NO_TMA`` unset. Callers ask only on sm_90."""
    instead = "the Hopper GEMM runs the pointer kernel"
    if _switched_off(NO_TMA):
        _fallback("TMA GEMM", f"{NO_TMA} is set", instead)
        return False
    version = triton_version()
    if version is None or version < TMA_TRITON:
        _fallback("TMA GEMM", f"Triton {_installed_triton()} has no host tensor descriptors (needs 3.4)", instead)
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError as exc:
        _fallback("TMA GEMM", f"triton.tools.tensor_descriptor does not import: {exc}", instead)
        return False
    return True


@functools.cache
def triton_build_error() -> type[Exception]:
    """The base class of Triton's compile, resource and ptxas errors (``TritonError``; ``CompilationError`` before
    it existed), for launchers that fall back when a kernel does not build. Only where Triton imports."""
    try:
        from triton.errors import TritonError
    except ImportError:  # older Triton
        from triton.compiler.errors import CompilationError

        return CompilationError
    return TritonError


def tensor_descriptor_class(gluon_layout: bool = False) -> type:
    """The host ``TensorDescriptor`` class: Gluon's (it carries a shared-memory layout) or Triton's. Only after
    :func:`gluon` / :func:`host_tma` said yes."""
    if gluon_layout:
        return gluon_api().TensorDescriptor
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor


def _no_op_gdc() -> tuple[Callable, Callable]:
    import triton

    # Stand-ins with the same call shape; the kernels call them only under constexpr flags that pdl() keeps False.
    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

    return gdc_wait, gdc_launch_dependents


@functools.cache
def _gdc_reason() -> str | None:
    """Why Triton has no programmatic-dependent-launch intrinsics, or None when it has them."""
    try:
        from triton.language.extra import cuda
    except ImportError as exc:
        return f"triton.language.extra.cuda does not import: {exc}"
    if not (hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")):
        return f"Triton {_installed_triton()} has no gdc_wait / gdc_launch_dependents"
    # Triton 3.4.0's gdc functions still take ``_builder`` where its code generator passes builtins ``_semantic``:
    # every kernel calling them fails to compile ("unexpected keyword argument '_semantic'";
    # tests/int8/test_kernel_compile.py on sm_90+). Ask for the keyword the language's own builtins take.
    import inspect

    import triton.language as tl

    def builtin_keyword(fn: Callable) -> set[str]:
        return {"_builder", "_semantic"} & set(inspect.signature(fn).parameters)

    wanted = builtin_keyword(tl.program_id)
    if any(builtin_keyword(f) != wanted for f in (cuda.gdc_wait, cuda.gdc_launch_dependents)):
        return (f"Triton {_installed_triton()}'s gdc_wait / gdc_launch_dependents take "
                f"{'/'.join(sorted(builtin_keyword(cuda.gdc_wait))) or 'no builder'}, its compiler passes "
                f"{'/'.join(sorted(wanted))}: they do not compile")
    return None


@functools.cache
def gdc_functions() -> tuple[Callable, Callable]:
    """``(gdc_wait, gdc_launch_dependents)`` for kernels to call: Triton's, or no-op ``@triton.jit`` stand-ins when
    this Triton lacks them (then :func:`pdl` is False and no kernel is compiled with a flag that calls them)."""
    if _gdc_reason() is not None:
        return _no_op_gdc()
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    return gdc_wait, gdc_launch_dependents


@functools.cache
def pdl() -> bool:
    """Whether kernels may use programmatic dependent launch (where the GPU has it, sm_90+: launch/host.py asks
    this after the capability): Triton's intrinsics exist and ``INT8_W8A8_NO_PDL`` is unset."""
    instead = "the few-rows GEMM launches after the quant kernel in plain stream order"
    if _switched_off(NO_PDL):
        _fallback("programmatic dependent launch", f"{NO_PDL} is set", instead)
        return False
    reason = _gdc_reason()
    if reason is not None:
        _fallback("programmatic dependent launch", reason, instead)
        return False
    return True


_HOPPER_NAMES = ("fence_async_shared", "mbarrier", "tma", "warpgroup_mma", "warpgroup_mma_wait")


@functools.cache
def gluon_api() -> types.SimpleNamespace | None:
    """Gluon's modules and the Hopper names the warp-specialized GEMM uses (``gluon``, ``gl``, ``TensorDescriptor``
    and :data:`_HOPPER_NAMES`), or None when this Triton lacks any of them. Availability only: whether the kernel
    may run is :func:`gluon`."""
    return _load_gluon()[0]


@functools.cache
def _load_gluon() -> tuple[types.SimpleNamespace | None, str | None]:
    try:
        from triton.experimental import gluon as gluon_module
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia import hopper
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    except ImportError as exc:
        return None, f"no Gluon in this Triton ({exc})"
    missing = [n for n in _HOPPER_NAMES if not hasattr(hopper, n)]
    missing += [n for n in ("NVMMASharedLayout", "NVMMADistributedLayout", "warp_specialize") if not hasattr(gl, n)]
    if missing or not hasattr(gluon_module, "constexpr_function"):
        return None, f"Gluon lacks {', '.join(missing) or 'constexpr_function'}"
    api = types.SimpleNamespace(gluon=gluon_module, gl=gl, TensorDescriptor=TensorDescriptor,
                                **{n: getattr(hopper, n) for n in _HOPPER_NAMES})
    return api, None


@functools.cache
def gluon() -> bool:
    """Whether the Gluon GEMM may run (callers ask only on sm_90): Gluon with its Hopper names on the Triton
    release it was tested on (its API moves between releases, and some unsupported constructs abort the process
    in the compiler instead of raising), host TMA available, and ``INT8_W8A8_NO_GLUON`` unset."""
    instead = "the Triton TMA kernel runs every large-M shape"
    if _switched_off(NO_GLUON):
        _fallback("Gluon GEMM", f"{NO_GLUON} is set", instead)
        return False
    version = _installed_triton() or "none"
    if not version.startswith(TESTED_TRITON):
        _fallback("Gluon GEMM", f"Triton {version} is not the {TESTED_TRITON}x it was tested on", instead)
        return False
    api, reason = _load_gluon()
    if api is None:
        _fallback("Gluon GEMM", reason, instead)
        return False
    return host_tma()


@functools.cache
def _triton_fp8_reason() -> str | None:
    """Why this Triton cannot build an e4m3 dot, or None when it can."""
    if _installed_triton() is None:
        return "the 'triton' package is not installed"
    import triton.language as tl

    if not hasattr(tl, "float8e4nv"):
        return f"Triton {_installed_triton()} has no float8e4nv"
    return None


def fp8_attention_unavailable_reason(device: torch.device) -> str | None:
    """Why the attention kernel cannot run ``P . V`` in float8 e4m3 on the CUDA ``device``, or None when it can:
    ``INT8_W8A8_NO_FP8_ATTENTION`` set, torch or Triton without e4m3, or a GPU below sm_89 (no fp8 tensor cores;
    Triton refuses the dot there). The caller logs the reason once and runs ``P . V`` in 16 bits."""
    if _switched_off(NO_FP8_ATTENTION):
        return f"{NO_FP8_ATTENTION} is set"
    if not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no float8_e4m3fn"
    reason = _triton_fp8_reason()
    if reason is not None:
        return reason
    if device.type != "cuda":
        return f"fp8 tensor cores are a CUDA feature, the tensors are on {device.type}"
    major, minor = capability(device)
    return fp8_dot_unavailable_reason((major, minor), triton_version())


def fp8_dot_unavailable_reason(capability: tuple[int, int], version: tuple[int, int] | None) -> str | None:
    """Why Triton ``version`` gives no fp8 tensor-core dot on a GPU of ``capability``, or None when it does."""
    major, minor = capability
    if (major, minor) < FP8_MIN_CAPABILITY:
        return (f"the GPU is sm_{major}{minor}; fp8 tensor cores need sm_{FP8_MIN_CAPABILITY[0]}"
                f"{FP8_MIN_CAPABILITY[1]} (Ada) or newer")
    if major == 12 and version is not None and version < FP8_SM120_TRITON:
        # Triton 3.3/3.4 compile an e4m3 dot for sm_120 without an fp8 MMA (converted to 16 bits first), found by
        # tests/int8/test_kernel_compile.py: 16-bit P . V is as exact and no slower there.
        return (f"Triton {version[0]}.{version[1]} has no fp8 tensor-core dot for sm_{major}{minor} (needs "
                f"{FP8_SM120_TRITON[0]}.{FP8_SM120_TRITON[1]})")
    return None


# ---------------------------------------------------------------------------------------- compiled-kernel launcher
@functools.cache
def direct_launch() -> bool:
    """Whether compiled kernels may be launched through their C entry (and eager plans replayed), with the launcher
    layout checked per kernel by :func:`direct_launch_entry`: ``INT8_W8A8_NO_DIRECT_LAUNCH`` unset."""
    if _switched_off(NO_DIRECT_LAUNCH):
        _fallback("direct kernel launch", f"{NO_DIRECT_LAUNCH} is set",
                  "kernels launch through Triton's compiled.run and multi-kernel eager plans are not built")
        return False
    return True


@functools.cache
def eager_plans() -> bool:
    """Whether eager calls may record their kernel launches and replay them from the layer's ``forward``:
    ``INT8_W8A8_NO_EAGER_PLANS`` unset (plans also need :func:`direct_launch`, which records the launches)."""
    if _switched_off(NO_EAGER_PLANS):
        _fallback("eager launch plans", f"{NO_EAGER_PLANS} is set", "every eager call takes the normal launch path")
        return False
    return True


def reset() -> None:
    """Forget every detected fact (tests: after changing the environment or faking a probe)."""
    for cached in (_installed_triton, _triton_fp8_reason, host_tma, _gdc_reason, gdc_functions, pdl, gluon_api,
                   _load_gluon, gluon,
                   direct_launch, eager_plans):
        cached.cache_clear()
