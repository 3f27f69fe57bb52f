"""The gate's readers of Triton's compiled-kernel launcher (part of :mod:`int8.compat`, the one gate): the C entry a
direct launch calls, and how Triton 3.6 wraps and encodes TMA descriptor arguments, for the launchers and the
eager-plan replays of :mod:`int8.launch.fast_launch`. Each reader recognizes the layout it was written for and
answers None or raises ValueError on any other, so the caller falls back to ``compiled.run``.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _fallback, direct_launch

__all__ = ["direct_launch_entry", "tensordesc_entry", "tensordesc_encoders"]


def direct_launch_entry(compiled: object) -> Callable | None:
    """The C launch entry of a compiled kernel when it needs no scratch memory or cooperative grid (then the Python
    wrapper around it only passes None/False through, and the PDL flag, which the caller passes itself); else None.

    Only for the launcher layout this call convention was verified on (Triton 3.6: ``launch(grid, stream,
    function, cooperative, pdl, global_scratch, profile_scratch, metadata, hooks..., *args)``). Triton 3.8's
    launcher takes its arguments in another order (it has ``arg_annotations``); there, and on any layout not
    recognized, launches go through ``compiled.run``, whose convention both share."""
    if not direct_launch():
        return None
    runner = compiled.run
    if hasattr(runner, "arg_annotations") or hasattr(runner, "kernel_signature"):
        _fallback("direct kernel launch", "this Triton's launcher has another argument layout than 3.6's",
                  "kernels launch through Triton's compiled.run")
        return None
    needs_wrapper = (getattr(runner, "global_scratch_size", 1) or getattr(runner, "profile_scratch_size", 1)
                     or getattr(runner, "launch_cooperative_grid", True) or not hasattr(runner, "launch_pdl"))
    launch = getattr(runner, "launch", None)
    return None if needs_wrapper or launch is None else launch


def tensordesc_entry(direct: Callable) -> tuple[Callable, frozenset[int], list]:
    """(C launch entry, argument positions that are TMA descriptors, their metadata) of a direct launch entry.

    Triton 3.6 wraps the C entry of a kernel with descriptor arguments in a Python function that encodes each
    descriptor into its tensor map per call (``wrap_handle_tensordesc``); its closure holds the C entry, the
    positions and the per-descriptor metadata. A kernel without descriptors has the C entry itself. Raises
    ValueError on another wrapper."""
    names = getattr(getattr(direct, "__code__", None), "co_freevars", None)
    if names is None:  # a builtin: the C entry, no descriptor arguments
        return direct, frozenset(), []
    cells = dict(zip(names, (c.cell_contents for c in direct.__closure__ or ())))
    if not {"launcher", "tensordesc_indices", "tensordesc_meta"} <= cells.keys():
        raise ValueError("PreparedLaunch.replayer: unknown launcher wrapper (not Triton 3.6's descriptor wrapper).")
    meta = list(cells["tensordesc_meta"])
    if any(m is None for m in meta):
        raise ValueError("PreparedLaunch.replayer: descriptors without TMA metadata are not replayable.")
    return cells["launcher"], frozenset(cells["tensordesc_indices"]), meta


def tensordesc_encoders() -> tuple[Callable, dict, Callable]:
    """``(make_tensordesc_arg, TMA_DTYPE_DEVICE_TO_HOST, fill_tma_descriptor)``: how Triton 3.6's NVIDIA driver
    expands a descriptor argument and encodes a tensor map, for replays that re-encode one per call. Raises
    ValueError when this Triton has another layout (the replay is then not built)."""
    try:
        import triton
        from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST, make_tensordesc_arg

        fill = triton.runtime.driver.active.utils.fill_tma_descriptor
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"PreparedLaunch.replayer: this Triton encodes descriptors another way ({exc}).") from exc
    return make_tensordesc_arg, TMA_DTYPE_DEVICE_TO_HOST, fill
