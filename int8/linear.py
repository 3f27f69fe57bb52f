"""``Int8Linear``: an nn.Module holding an int8 weight, computing W8A8 through the chosen backend."""

from __future__ import annotations

import torch
import torch.nn as nn

from .backends.base import Backend
from .backends.registry import resolve_backend
from .config import Int8Config
from .hadamard import check_group_size
from .launch.eager_plan import planned_call, plans_apply, replay_key, replayable
from .launch.host import is_capturing
from .quantize import quantize_rotated_per_channel
from .weights import Int8Weights, comfy_quant_bytes, parse_comfy_quant, per_channel_scale

__all__ = ["Int8Linear", "comfy_quant_bytes", "parse_comfy_quant"]

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
        self._backends: dict[torch.device, Backend] = {}
        self._packed: dict[torch.device, object] = {}
        self._state: dict[torch.device, tuple[Backend, Int8Weights, dict, int]] = {}
        # replay_key(x) -> (plan, tensors it was built on, out shape)
        self._replays: dict[tuple, tuple[object, Int8Weights, tuple[int, ...]]] = {}

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
        weight = linear.weight.detach()
        n, k = weight.shape
        bias = getattr(linear, "bias", None)
        layer = cls(k, n, bias is not None, config, hadamard_group, smooth is not None, weight.device,
                    bias.dtype if bias is not None else torch.float32)
        w = weight.double()
        if smooth is not None:
            w = w * smooth.double().reshape(1, -1)
            layer.input_smooth.copy_((1.0 / smooth.double()).float())
        q, scale = quantize_rotated_per_channel(w, hadamard_group, name)
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    def int8_weights(self, device: torch.device) -> Int8Weights:
        return Int8Weights(self.weight, self.weight_scale, self.bias, self.hadamard_group, self.input_smooth,
                           self._packed.get(device))

    def backend_for(self, device: torch.device) -> Backend:
        """The backend for ``device``, resolved once per device (``auto`` logs its choice once)."""
        return self._call_state(device)[0]

    def _call_state(self, device: torch.device) -> tuple[Backend, Int8Weights, dict, int]:
        """(backend, tensors, eager plans, rows up to which eager calls use plans) for ``device``, cached: building
        them costs more Python than a small-M kernel.

        The cache is checked against the current buffers by identity, so replacing a buffer (load_state_dict,
        assignment, ``.to()``) rebuilds it on the next call.
        """
        state = self._state.get(device)
        buffers = self._buffers
        if state is not None:
            w = state[1]
            if (w.weight is buffers["weight"] and w.weight_scale is buffers["weight_scale"]
                    and w.bias is buffers["bias"] and w.smooth is buffers["input_smooth"]
                    and w.hadamard_group == self.hadamard_group):
                return state
        backend = self._backends.get(device)
        if backend is None:
            backend = self._backends[device] = resolve_backend(self.config.runtime_backend, device)
            if self.config.prepack_int8_weights:
                self._packed[device] = backend.prepack(self.weight)
        state = self._state[device] = (backend, self.int8_weights(device), {}, backend.plan_rows(self.config))
        backend.prepare_device_state(state[1], self.config)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and self._replays:
            # An eager few-rows call seen before: replay its plan with as little Python as possible (at 64 rows
            # this layer's whole cost is CPU time; bf16 F.linear's is too). Keyed on x as given (any leading
            # dims), so the checks, the device lookup and the reshapes below are skipped.
            hit = self._replays.get(replay_key(x))
            if hit is not None and not is_capturing():
                plan, w, out_shape = hit
                b = self._buffers
                y = None
                if (b["weight"] is w.weight and b["weight_scale"] is w.weight_scale and b["bias"] is w.bias
                        and b["input_smooth"] is w.smooth and self.hadamard_group == w.hadamard_group):
                    y = plan(x, out_shape)
                if y is not None:
                    return y
                self._replays.clear()  # buffers replaced or moved: the normal path below rebuilds what it needs
        k = self.in_features
        if x.shape[-1] != k or x.dtype not in _FLOAT_DTYPES:
            self._reject(x)
        x2 = x if x.dim() == 2 else x.reshape(-1, k)
        backend, w, plans, plan_rows = self._call_state(x.device)
        y = None
        if plans_apply(x2, plan_rows):
            y = planned_call(plans, x2, backend.eager_plan, w, self.config)
            plan = replayable(plans, x, x2) if y is not None else None
            if plan is not None:
                self._replays[replay_key(x)] = (plan, w, (*x.shape[:-1], self.out_features))
        if y is None:
            y = backend.linear(x2, w, self.config)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _reject(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects input [..., {self.in_features}], got {tuple(x.shape)}.")
        raise TypeError(f"Int8Linear takes float16/bfloat16/float32 input, got {x.dtype}.")

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        # A prepacked layout belongs to one device; drop it when the buffers move (rebuilt on next forward).
        self._packed.clear()
        self._backends.clear()
        self._state.clear()
        self._replays.clear()
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
        scale_key = prefix + "weight_scale"
        if scale_key in state_dict and state_dict[scale_key].numel() == 1:
            # Per-tensor files (ComfyUI's default) become per-channel: same numbers, one kernel path.
            state_dict = dict(state_dict)
            state_dict[scale_key] = per_channel_scale(state_dict[scale_key], self.out_features)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if meta_key in unexpected:
            unexpected.remove(meta_key)

    def extra_repr(self) -> str:
        backend = next(iter(self._backends.values())).name if self._backends else self.config.runtime_backend
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"bias={self.bias is not None}", f"backend={backend}"]
        if self.hadamard_group:
            parts.append(f"hadamard_group={self.hadamard_group}")
        if self.input_smooth is not None:
            parts.append("smooth=True")
        return ", ".join(parts)
