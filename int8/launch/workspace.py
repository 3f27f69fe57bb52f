"""Per-device scratch for serial split-K: partial tiles plus arrival counters that the kernels re-arm to zero.

A kernel that splits a tile's K loop over several programs has each write its partial tile here; the last to
arrive (an atomic counter per tile) sums them in a fixed order, runs the epilogue and resets the counter, so a
launch needs no memset and replays correctly inside a CUDA graph. The buffers are shared per device: two kernels
using one workspace must not run concurrently on different streams.
"""

from __future__ import annotations

import torch

from .host import device_index

__all__ = ["SplitKWorkspace"]


class SplitKWorkspace:
    """Partial tiles (``dtype``) and zeroed int32 counters per device; grown, never shrunk.

    A grown-out buffer is kept alive, not freed: a CUDA graph recorded earlier (reduce-overhead compile) replays
    with the old address baked in, so freeing it would let the allocator hand that memory to another tensor.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._bufs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._retired: list[torch.Tensor] = []

    def get(self, device: torch.device, part_elems: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers with room for ``part_elems`` partial elements and ``tiles`` counters (allocated if needed)."""
        idx = device_index(device)
        part, count = self._bufs.get(idx, (None, None))
        if part is None or part.numel() < part_elems:
            self._retired += [part] if part is not None else []
            part = torch.empty(max(part_elems, 1 << 20), dtype=self.dtype, device=device)
        if count is None or count.numel() < tiles:
            self._retired += [count] if count is not None else []
            count = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
        self._bufs[idx] = (part, count)
        return part, count
