"""Launch an already-compiled Triton kernel without the JIT's per-call argument binding.

At a few rows a linear layer's GPU time is ~10 us, while ``kernel[grid](...)`` (binder, specialization, cache
lookup, launch-metadata, and for autotuned kernels the autotuner's bookkeeping) costs tens of microseconds of
Python per call. The first call for a key goes through the normal JIT (compiling if needed) and keeps the
``CompiledKernel``; later calls go straight to its C launcher.

The caller's key must capture everything the JIT specializes on: argument dtypes, which integer arguments are 1
or divisible by 16, which pointers are 16-byte aligned, and the constexprs. A wrong key would run a kernel
compiled for other alignments, so callers build it from exactly those facts (see ``triton_w8a16``).

:func:`capture_launches` records the launches of one call as :class:`PreparedLaunch` objects, which replay the
same compiled kernel with new per-call pointers (the eager launch plans of :mod:`eager_plan`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch

from ..compat import launcher as launcher_layout

__all__ = ["CompiledLauncher", "PreparedLaunch", "Recording", "capture_launches", "note_temporary",
           "recording_paused"]


class Recording(list):
    """What :func:`capture_launches` recorded: the launches in order (a list), and in ``temporaries`` the per-call
    buffers the kernels' Python allocated and said so (:func:`note_temporary`): a replay allocates those anew."""

    def __init__(self) -> None:
        super().__init__()
        self.temporaries: list[torch.Tensor] = []


_captured: Recording | None = None  # set while capture_launches() records


@contextlib.contextmanager
def capture_launches() -> Iterator[Recording]:
    """Record every :class:`CompiledLauncher` launch made inside the block, in order (None for a launch that has
    no compiled kernel to replay: the interpreter). Launches still run normally."""
    global _captured
    outer, _captured = _captured, Recording()
    try:
        yield _captured
    finally:
        _captured = outer


@contextlib.contextmanager
def recording_paused() -> Iterator[None]:
    """Launches inside the block are not recorded (benchmarking and autotuning runs inside a recorded call)."""
    global _captured
    outer, _captured = _captured, None
    try:
        yield
    finally:
        _captured = outer


def note_temporary(*tensors: torch.Tensor) -> None:
    """Declare fresh per-call buffers (e.g. the quantized activation between two kernels) to a recording, if one is
    on: a replayed plan allocates them again per call instead of keeping the recorded ones."""
    if _captured is not None:
        _captured.temporaries.extend(tensors)


class PreparedLaunch:
    """One recorded launch, replayable with new pointers for the arguments that change per call.

    Every tensor argument becomes its data pointer (an int: Triton's C launcher then skips the per-pointer
    ``data_ptr()`` call and driver query, ~2.5 us per split-K launch on an H100 host), and the tensors are kept
    alive here. :meth:`bind` names the per-call arguments; the caller guarantees a replayed pointer has the same
    16-byte alignment as the recorded one (the kernel was compiled for it).
    """

    def __init__(self, compiled: object, direct: Callable | None, pdl: bool, device_index: int,
                 grid: tuple[int, int, int], args: Sequence[object]) -> None:
        self._compiled, self._direct, self._pdl, self._device_index, self._grid = compiled, direct, pdl, device_index, grid
        self._tensors = list(args)
        self._args = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        self._slots: list[tuple[int, int]] = []  # (argument index, position in __call__'s pointers)

    def bind(self, *per_call: torch.Tensor, borrowed: Sequence[torch.Tensor] = ()) -> PreparedLaunch:
        """Declare the per-call tensors of the recorded call, in the order :meth:`__call__` gets their pointers.
        Raises ValueError if one was not an argument (the recording is not the call the caller thinks it is).
        ``borrowed``: fixed tensors this launch must not keep alive (their owner does; the caller checks they still
        exist at their recorded address before each replay)."""
        found = [[i for i, a in enumerate(self._tensors) if a is t] for t in per_call]
        if not all(found):
            raise ValueError("PreparedLaunch.bind: a per-call tensor is not an argument of the recorded launch.")
        self._slots = [(i, j) for j, indices in enumerate(found) for i in indices]
        # Only the fixed tensors we own (workspaces, converted copies) stay alive; per-call ones would pin the
        # first call's activations, borrowed ones their owner's memory (a weight ComfyUI has offloaded).
        ids = {id(t) for t in (*per_call, *borrowed)}
        self._tensors = [a for a in self._tensors if isinstance(a, torch.Tensor) and id(a) not in ids]
        return self

    def __call__(self, *pointers: int) -> None:
        """Launch on the current stream with ``pointers`` (ints) in the bound per-call slots."""
        args = self._args.copy()
        for i, j in self._slots:
            args[i] = pointers[j]
        _launch_compiled(self._compiled, self._direct, self._pdl, self._grid, _raw_stream(self._device_index), args)

    def two_pointer_call(self) -> Callable[[int, int], None]:
        """The launch as a function of the two bound pointers, specialized for an eager plan's replay: same effect
        as ``self(a, b)`` with one Python frame and no per-call argument copy (a few-rows layer's whole cost is
        Python of this kind). Falls back to :meth:`__call__` where the layout is not one input, one output slot."""
        slots = sorted(self._slots, key=lambda s: s[1])
        if self._direct is None or [j for _, j in slots] != [0, 1]:
            return self
        (slot_a, _), (slot_b, _) = slots
        direct, function, meta, pdl = self._direct, self._compiled.function, self._compiled.packed_metadata, self._pdl
        (g0, g1, g2), index, args = self._grid, self._device_index, list(self._args)

        def call(a: int, b: int) -> None:
            # ``args`` is this closure's own list: filled in place (one launch at a time; the GIL is held throughout).
            args[slot_a] = a
            args[slot_b] = b
            direct(g0, g1, g2, _raw_stream(index), function, False, pdl, None, None, meta, None, None, None, *args)

        call.keepalive = self  # the fixed tensors this launch owns (workspaces, converted copies) live with it
        return call


    def replayer(self, per_call: Sequence[torch.Tensor], borrowed: Sequence[torch.Tensor] = ()
                 ) -> Callable[[Sequence[int]], None]:
        """The launch as a function of the data pointers of ``per_call`` (same order): for a plan of several launches
        whose buffers change per call. An argument is per-call when it is, or views from its first byte, one of
        ``per_call`` (also a TMA descriptor's base: its tensor map is encoded again per call); fixed tensors become
        pointers, kept alive here unless they share storage with ``borrowed``. Raises ValueError when the launch
        cannot be replayed this way: no direct C entry, a descriptor layout this code does not know, or an argument
        that views a per-call buffer from another offset."""
        if self._direct is None:
            raise ValueError("PreparedLaunch.replayer: the kernel has no direct launch entry.")
        raw, desc_positions, desc_meta = _tensordesc_entry(self._direct)
        per_call_storage = [(t.untyped_storage().data_ptr(), t.data_ptr()) for t in per_call]
        borrowed_storage = {t.untyped_storage().data_ptr() for t in borrowed}
        final: list[object] = []
        ptr_slots: list[tuple[int, int]] = []  # (position in final, per-call index)
        desc_slots: list[tuple[int, int, tuple]] = []  # (position in final, per-call index, fill arguments)
        keep: list[torch.Tensor] = []
        metas = iter(desc_meta)
        for i, arg in enumerate(self._tensors):
            if i in desc_positions:
                meta = next(metas)
                expanded = _expand_descriptor(arg, meta)
                slot = _per_call_slot(arg.base, per_call_storage)
                if slot is not None:
                    desc_slots.append((len(final), slot, _fill_arguments(expanded, arg, meta)))
                elif arg.base.untyped_storage().data_ptr() not in borrowed_storage:
                    keep.append(arg.base)
                final.extend(expanded)
            elif isinstance(arg, torch.Tensor):
                slot = _per_call_slot(arg, per_call_storage)
                if slot is not None:
                    ptr_slots.append((len(final), slot))
                elif arg.untyped_storage().data_ptr() not in borrowed_storage:
                    keep.append(arg)
                final.append(arg.data_ptr())
            else:
                final.append(arg)
        compiled, pdl, (g0, g1, g2), index = self._compiled, self._pdl, self._grid, self._device_index
        function, packed = compiled.function, compiled.packed_metadata
        fill = _fill_tma_descriptor() if desc_slots else None

        def replay(pointers: Sequence[int]) -> None:
            for pos, j in ptr_slots:
                final[pos] = pointers[j]
            for pos, j, fill_args in desc_slots:
                final[pos] = fill(pointers[j], *fill_args)
            raw(g0, g1, g2, _raw_stream(index), function, False, pdl, None, None, packed, None, None, None, *final)

        replay.keepalive = keep  # fixed buffers this launch owns (workspaces, converted copies)
        replay.per_call_used = {j for _, j in ptr_slots} | {j for _, j, _ in desc_slots}
        return replay


class CompiledLauncher:
    """Caches the compiled kernel per key and launches it directly on the current stream.

    ``jit_fn`` is a ``triton.JITFunction`` (not an autotuner: callers pick the config). Arguments are passed
    positionally in the kernel's signature order, constexprs included (the C launcher skips them).
    """

    def __init__(self, jit_fn: object) -> None:
        self._fn = jit_fn
        self._compiled: dict[Hashable, tuple[object, Callable | None, bool]] = {}

    def __call__(self, key: Hashable, device_index: int, grid: tuple[int, int, int], args: Sequence[object],
                 num_warps: int, num_stages: int, launch_pdl: bool = False, **options: object) -> None:
        """``launch_pdl``: launch with programmatic dependent launch (sm_90+; the kernel must ``gdc_wait`` before it
        reads anything an earlier kernel wrote). It is part of the compiled kernel, so callers put it in ``key``;
        so are further compile ``options`` (e.g. ``maxnreg``), used on the compiling call."""
        key = (device_index, key)  # a compiled kernel's function handle belongs to one device
        entry = self._compiled.get(key)
        if entry is None:
            # First call for this key: the normal JIT path compiles (or loads from cache) and launches.
            extra = {"launch_pdl": True, **options} if launch_pdl else dict(options)
            compiled = self._fn[grid](*args, num_warps=num_warps, num_stages=num_stages, **extra)
            if hasattr(compiled, "packed_metadata"):  # TRITON_INTERPRET=1 returns no compiled kernel: no caching
                entry = self._compiled[key] = (compiled, _direct_launch(compiled),
                                               bool(getattr(compiled.run, "launch_pdl", False)))
            if _captured is not None:
                _captured.append(None if entry is None else PreparedLaunch(*entry, device_index, grid, args))
            return
        if _captured is not None:
            _captured.append(PreparedLaunch(*entry, device_index, grid, args))
        _launch_compiled(*entry, grid, _raw_stream(device_index), args)


def _launch_compiled(compiled: object, direct: Callable | None, pdl: bool, grid: Sequence[int], stream: int,
                     args: Sequence[object]) -> None:
    """Launch a compiled kernel: through its C entry (``direct``, see :func:`_direct_launch`) or ``compiled.run``."""
    if direct is not None:
        direct(grid[0], grid[1], grid[2], stream, compiled.function, False, pdl, None, None,
               compiled.packed_metadata, None, None, None, *args)
    else:
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                     *args)


def _direct_launch(compiled: object) -> Callable | None:
    """The compiled kernel's C launch entry, or None for ``compiled.run`` (see
    :func:`int8.compat.launcher.direct_launch_entry`)."""
    return launcher_layout.direct_launch_entry(compiled)


def _stream_getter() -> Callable[[int], int]:
    try:
        from torch._C import _cuda_getCurrentRawStream  # what Triton's own driver uses
    except ImportError:  # pragma: no cover - builds without CUDA
        return lambda idx: torch.cuda.current_stream(idx).cuda_stream
    return _cuda_getCurrentRawStream


_raw_stream = _stream_getter()


def _per_call_slot(t: torch.Tensor, per_call_storage: list[tuple[int, int]]) -> int | None:
    storage = t.untyped_storage().data_ptr()
    for j, (per_call_storage_ptr, ptr) in enumerate(per_call_storage):
        if storage == per_call_storage_ptr:
            if t.data_ptr() != ptr:
                raise ValueError("PreparedLaunch.replayer: an argument views a per-call buffer at another offset.")
            return j
    return None


def _tensordesc_entry(direct: Callable) -> tuple[Callable, frozenset[int], list]:
    """(C entry, descriptor positions, their metadata) of a direct launch entry (see
    :func:`int8.compat.launcher.tensordesc_entry`)."""
    return launcher_layout.tensordesc_entry(direct)


def _expand_descriptor(desc: object, meta: dict) -> list:
    make_tensordesc_arg, _, _ = launcher_layout.tensordesc_encoders()
    return make_tensordesc_arg(desc, meta)


def _fill_arguments(expanded: list, desc: object, meta: dict) -> tuple:
    """The arguments after the base address with which ``make_tensordesc_arg`` encoded ``desc``'s tensor map."""
    _, tma_dtype_device_to_host, _ = launcher_layout.tensordesc_encoders()
    rank = len(desc.shape)
    shape, strides = expanded[1:1 + rank], expanded[1 + rank:1 + 2 * rank]
    return (meta["swizzle"], meta["elem_size"], tma_dtype_device_to_host[meta["elem_type"]], meta["block_size"],
            shape, strides, 1 if desc.padding == "nan" else 0)


def _fill_tma_descriptor() -> Callable:
    return launcher_layout.tensordesc_encoders()[2]
