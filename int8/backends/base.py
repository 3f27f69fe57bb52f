"""What a W8A8 backend is: one object that computes a whole int8 linear layer, and says where it can run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..compat import cuda_int8_unavailable_reason
from ..config import Int8Config
from ..launch.eager_plan import plan_key
from ..quantize import dequantize
from ..weights import Int8Weights

__all__ = ["Int8Weights", "Backend", "plan_key", "prepare_activation", "cuda_int8_unavailable_reason"]


def prepare_activation(x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
    """Apply the layer's online input transforms (smoothing, then Hadamard rotation) in plain torch."""
    if w.smooth is not None:
        x = x * w.smooth.to(x.dtype)
    if w.hadamard_group:
        from ..hadamard import rotate_activation  # local: the rotation module is optional for plain layers

        x = rotate_activation(x, w.hadamard_group)
    return x


class Backend:
    """Base class. Subclasses set ``name``/``priority`` and implement :meth:`w8a8_linear`.

    ``priority``: higher wins under ``auto`` among the backends available on the device.
    """

    name: str = "base"
    priority: int = 0
    description: str = ""

    def unavailable_reason(self, device: torch.device) -> str | None:
        """None when this backend can run int8 layers on ``device``; otherwise why not, in words."""
        return None

    def auto_eligible(self, device: torch.device) -> bool:
        """Whether ``auto`` may pick this backend on ``device`` (it can run there and is worth running)."""
        return True

    def prepare_device_state(self, w: Int8Weights, config: Int8Config) -> None:
        """Allocate now the persistent per-device buffers this layer's calls will use (default: none).

        Called when a layer's per-device state is built, which the lazy compile does eagerly before tracing: a
        buffer first allocated inside a CUDA-graph warm-up would land in the graph's memory pool, which inductor
        refuses ("tensor(s) in the cudagraph pool not tracked as outputs"). The base backend fills the Hadamard
        matrix :func:`prepare_activation` rotates with (fp32 math for 16-bit and fp32 inputs).
        """
        if w.hadamard_group:
            from ..hadamard import build_hadamard

            build_hadamard(w.hadamard_group, w.weight.device, torch.float32)

    def plan_rows(self, config: Int8Config) -> int:
        """Eager calls with at most this many rows may use :meth:`eager_plan` (0: this backend has none)."""
        return 0

    def eager_plan(self, x: torch.Tensor, w: Int8Weights, config: Int8Config) -> tuple[object | None, torch.Tensor | None]:
        """``(plan, y)``: run the 2-D call once and return a callable that replays it for later inputs with the same
        ``plan_key`` (None where no plan applies), with this call's output ``y`` (None when nothing ran). Only for
        eager calls; see ``int8/launch/eager_plan.py``."""
        return None, None

    def linear(self, x: torch.Tensor, w: Int8Weights, config: Int8Config) -> torch.Tensor:
        """A 2-D call as ``config`` routes it: few rows take :meth:`weight_only_linear`, the rest :meth:`w8a8_linear`."""
        if config.uses_small_batch_path(x.shape[0], w.weight.numel()):
            return self.weight_only_linear(x, w)
        return self.w8a8_linear(x, w)

    def w8a8_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        """``x`` is ``[M, K]`` float (bf16/fp16/fp32); returns ``[M, N]`` in ``x.dtype``."""
        raise NotImplementedError

    def weight_only_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        """The small-batch path: 16-bit matmul on the dequantized weight (activations stay in x.dtype)."""
        x = prepare_activation(x, w)
        weight = dequantize(w.weight, w.weight_scale, x.dtype)
        bias = w.bias.to(x.dtype) if w.bias is not None else None
        return F.linear(x, weight, bias)
