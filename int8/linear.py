"""``Int8Linear``: an nn.Module holding an int8 weight, computing W8A8 through the chosen backend."""

from __future__ import annotations

import torch
import torch.nn as nn

from .backends.base import Backend
from .config import Int8Config
from .hadamard import check_group_size
from .layer import BackendChoice, Int8LayerRuntime
from .quantize import quantize_linear
from .weights import Int8Weights, comfy_quant_bytes, parse_comfy_quant, per_channel_scale

__all__ = ["Int8Linear"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class Int8Linear(nn.Module):
    """W8A8 linear layer.

    Buffers: ``weight`` int8 ``[N, K]``; ``weight_scale`` fp32 ``[N, 1]``; ``bias`` ``[N]`` (any float dtype) or
    absent; ``input_smooth`` fp32 ``[K]`` (SmoothQuant multiplier on the input) or absent.
    ``hadamard_group`` (0 = off) rotates the input online; the stored weight is already rotated.
    Input ``[..., K]`` in fp16/bf16/fp32; output ``[..., N]`` in the input's dtype.
    The state dict is ComfyUI's native int8 layout (``weight``, ``weight_scale``, ``comfy_quant``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: Int8Config | None = None,
        hadamard_group: int = 0,
        smooth: bool = False,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if hadamard_group:
            check_group_size(hadamard_group, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.config = config or Int8Config()
        self.hadamard_group = int(hadamard_group)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        self.register_buffer("input_smooth", torch.ones(in_features, device=device) if smooth else None)
        self._runtime = Int8LayerRuntime(BackendChoice(self.config), out_features)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        config: Int8Config | None = None,
        hadamard_group: int = 0,
        smooth: torch.Tensor | None = None,
        name: str = "<linear>",
    ) -> Int8Linear:
        """Quantize any module with a 2-D ``weight`` (and optional ``bias``) like ``nn.Linear``.

        ``smooth`` ([K], optional): SmoothQuant factor s; the layer computes ``(x / s) @ (W * s).T``.
        ``hadamard_group``: fold a block Hadamard rotation into the weight. Raises ``NonFiniteWeightError``
        (naming ``name``) on NaN/Inf weights.
        """
        weights = quantize_linear(linear.weight, getattr(linear, "bias", None), hadamard_group, smooth, name)
        return cls.from_weights(weights, config)

    @classmethod
    def from_weights(cls, w: Int8Weights, config: Int8Config | None = None) -> Int8Linear:
        """The layer holding ``w``'s tensors (copied, on their device)."""
        bias = w.bias
        layer = cls(w.in_features, w.out_features, bias is not None, config, w.hadamard_group, w.smooth is not None,
                    w.weight.device, bias.dtype if bias is not None else torch.float32)
        layer.weight.copy_(w.weight)
        layer.weight_scale.copy_(w.weight_scale)
        if bias is not None:
            layer.bias.copy_(bias)
        if w.smooth is not None:
            layer.input_smooth.copy_(w.smooth)
        return layer

    def int8_weights(self) -> Int8Weights:
        """This layer's tensors as the backends read them."""
        return Int8Weights(self.weight, self.weight_scale, self.bias, self.hadamard_group, self.input_smooth)

    def backend_for(self, device: torch.device) -> Backend:
        """The backend for ``device`` (resolved once); the layer's per-device buffers are allocated here too (the
        lazy compile calls this before tracing)."""
        return self._runtime.prepare(torch.device(device), self.int8_weights())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        runtime = self._runtime
        if not torch.compiler.is_compiling() and runtime.replays:  # (dynamo must never see the dict)
            b = self._buffers  # (attribute access through nn.Module.__getattr__ costs more per call)
            y = runtime.replay(x, b["weight"], b["weight_scale"], b["bias"], b["input_smooth"])
            if y is not None:
                return y
        if x.shape[-1] != self.in_features or x.dtype not in _FLOAT_DTYPES:
            self._reject(x)
        return runtime(x, self.weight, self.weight_scale, self.bias, self.hadamard_group, self.input_smooth)

    def _reject(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects input [..., {self.in_features}], got {tuple(x.shape)}.")
        raise TypeError(f"Int8Linear takes float16/bfloat16/float32 input, got {x.dtype}.")

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        # Per-device state (plans, replays) belongs to the old tensors: rebuilt on next forward.
        self._runtime.reset()
        # module.to(bfloat16) must not round the fp32 scales: keep them, move them to the new device.
        keep = {k: getattr(self, k) for k in ("weight_scale", "input_smooth") if getattr(self, k) is not None}
        result = super()._apply(fn, recurse)
        for k, v in keep.items():
            setattr(self, k, v.to(self.weight.device))
        return result

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "comfy_quant"] = comfy_quant_bytes(self.hadamard_group)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # noqa: ANN001
        meta_key = prefix + "comfy_quant"
        if meta_key in state_dict:
            meta = parse_comfy_quant(state_dict[meta_key], prefix.rstrip("."))
            self.hadamard_group = int(meta.get("convrot_groupsize", 256)) if meta.get("convrot") else 0
        self._runtime.reset()  # loading copies into the same buffers: plans must not outlive the old settings
        scale_key = prefix + "weight_scale"
        if scale_key in state_dict and state_dict[scale_key].numel() == 1:
            # Per-tensor files (ComfyUI's default) become per-channel: same numbers, one kernel path.
            state_dict = dict(state_dict)
            state_dict[scale_key] = per_channel_scale(state_dict[scale_key], self.out_features)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if meta_key in unexpected:
            unexpected.remove(meta_key)

    def extra_repr(self) -> str:
        backend = self._runtime.choice.chosen or self.config.runtime_backend
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"bias={self.bias is not None}", f"backend={backend}"]
        if self.hadamard_group:
            parts.append(f"hadamard_group={self.hadamard_group}")
        if self.input_smooth is not None:
            parts.append("smooth=True")
        return ", ".join(parts)
