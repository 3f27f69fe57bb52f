"""ComfyUI glue: the ``custom_operations`` class the loader hands to ``comfy.sd``, built per load by a factory.

The Linear of this ops class decides per layer while ComfyUI loads the state dict:
- int8 keys present (``comfy_quant`` int8_tensorwise + ``weight_scale``): the file is pre-quantized, load as is;
- a 16-bit weight, ``on_the_fly_quantization`` on and the preset says quantize: quantize it here (progress per layer);
- otherwise: keep it in high precision, stored in the ``weight_dtype`` the user chose, exactly as stock ComfyUI.
Int8 weights are stored as ComfyUI's own ``QuantizedTensor`` (``TensorWiseINT8Layout``, per-channel scale), so
ComfyUI's offloading, partial / dynamic VRAM loading, pinning, LoRA patching (``convert_weight``/``set_weight``)
and ``state_dict`` saving treat them like its native int8; ``forward`` runs the engine's layer runtime
(:class:`~comfy_int8_w8a8.int8.layer.Int8LayerRuntime`, the same one ``Int8Linear`` uses).
ComfyUI is imported inside :func:`make_int8_ops`, so importing this module needs no ComfyUI.
"""

from __future__ import annotations

import dataclasses

import torch

from ..int8.backends.base import Backend
from ..int8.layer import Int8LayerRuntime
from ..int8.weights import INT8_FORMAT, Int8Weights, per_channel_scale
from .load_plan import Int8LoadPlan
from .lora import requantize_per_channel, requantize_streamed

__all__ = ["make_int8_ops"]

_HIGH_PRECISION = (torch.float16, torch.bfloat16, torch.float32)


def _is_float_weight(weight: torch.Tensor | None) -> bool:
    return weight is not None and weight.dim() == 2 and weight.dtype in _HIGH_PRECISION


def _group(weight) -> int:  # noqa: ANN001 - a ComfyUI QuantizedTensor
    return weight._params.convrot_groupsize if weight._params.convrot else 0


def make_int8_ops(plan: Int8LoadPlan) -> type:
    """Build the ops class for one load (like ``comfy.ops.mixed_precision_ops``): every op of the model comes from
    it; Linear decides per layer, the rest behave like ComfyUI's mixed-precision ops."""
    import comfy.ops
    from comfy.quant_ops import QuantizedTensor

    # The checkpoint reader hands over int8 and float layers only (fp8 is dequantized), so no format is disabled.
    base = comfy.ops.mixed_precision_ops({}, compute_dtype=torch.bfloat16)

    class Int8Ops(base):
        class Linear(base.Linear):
            def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):  # noqa: ANN001
                super().__init__(in_features, out_features, bias, device, dtype)
                # Compute / bias dtype of this layer: the model's dtype when it is a 16/32-bit type (fp8 weight
                # dtypes compute in bf16, as ComfyUI's manual cast does on GPUs that have bf16).
                compute = dtype if dtype in _HIGH_PRECISION else torch.bfloat16
                self.factory_kwargs = {"device": device, "dtype": compute}
                if bias:
                    self.bias = torch.nn.Parameter(torch.empty(out_features, device=device, dtype=compute),
                                                   requires_grad=False)
                self._model_dtype = dtype
                self._runtime = Int8LayerRuntime(plan.backends, out_features)

            # ---- loading -------------------------------------------------------------------------------------
            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # noqa: ANN001
                layer = prefix[:-1]
                weight = state_dict.get(prefix + "weight")
                quant = plan.cached_comfy_quant.pop(layer, None)
                if quant is not None:  # a weight-cache hit (see load_state_dict_as_int8)
                    state_dict[prefix + "comfy_quant"] = quant
                if prefix + "comfy_quant" in state_dict:
                    plan.report.prequantized += 1
                elif _is_float_weight(weight):  # (else: a missing weight or an unusual dtype, ComfyUI's handling)
                    reason = "on_the_fly_quantization is off" if not plan.on_the_fly else plan.decide(layer, weight)
                    if reason is None:
                        tensors = plan.quantize_layer(layer, weight, state_dict.get(prefix + "bias"))
                        state_dict.update({prefix + k: v for k, v in tensors.items()})
                        plan.report.quantized_at_load += 1
                    else:
                        plan.report.kept[reason] += 1
                smooth = state_dict.pop(prefix + "input_smooth", None)
                super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
                self._runtime.reset()
                if self.is_int8:
                    params = self.weight._params
                    if params.scale.numel() == 1:  # one kernel path and per-channel LoRA requantization
                        params = dataclasses.replace(params, scale=per_channel_scale(params.scale, self.out_features))
                        self.weight = torch.nn.Parameter(QuantizedTensor(self.weight._qdata, self.weight._layout_cls,
                                                                         params), requires_grad=False)
                    if smooth is not None:
                        self.input_smooth = torch.nn.Parameter(smooth.float(), requires_grad=False)
                elif isinstance(self.weight, torch.Tensor) and not isinstance(self.weight, QuantizedTensor):
                    if plan.keep_dtype is not None and self.weight.dtype != plan.keep_dtype:
                        self.weight = torch.nn.Parameter(self.weight.to(plan.keep_dtype), requires_grad=False)

            @property
            def is_int8(self) -> bool:
                return isinstance(self.weight, QuantizedTensor) and getattr(self, "quant_format", None) == INT8_FORMAT

            def state_dict(self, *args, destination=None, prefix="", **kwargs):  # noqa: ANN001, ANN201
                sd = destination if destination is not None else {}
                return comfy.ops._quantized_weight_state_dict(self, sd, prefix,
                                                              extra_quant_params=("input_scale", "input_smooth"))

            # ---- LoRA: ModelPatcher dequantizes with convert_weight (inherited), patches, then calls this ---------
            def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):  # noqa: ANN001, ANN201
                if not self.is_int8:
                    return super().set_weight(weight, inplace_update=inplace_update, seed=seed,
                                              return_weight=return_weight, **kwargs)
                layer = getattr(self, "seed_key", None) or f"Linear({self.in_features}->{self.out_features})"
                new = self._quantized_like(*requantize_per_channel(weight, _group(self.weight), layer))
                if return_weight:
                    return new
                self.weight = torch.nn.Parameter(new, requires_grad=False)
                return None

            def _quantized_like(self, q: torch.Tensor, scale: torch.Tensor):  # noqa: ANN202 - a QuantizedTensor
                """``q`` and ``scale`` as a QuantizedTensor with this layer's layout and other parameters."""
                old = self.weight
                return QuantizedTensor(q, old._layout_cls, dataclasses.replace(old._params, scale=scale,
                                                                               orig_dtype=old.dtype))

            # ---- forward ---------------------------------------------------------------------------------------
            def forward(self, input, *args, **kwargs):  # noqa: A002, ANN001, ANN201
                if (not torch.compiler.is_compiling() and self._runtime.replays and isinstance(self.weight, QuantizedTensor)
                        and self._resident_mode()):
                    # An eager call seen before: its plan replays with the least Python (see Int8LayerRuntime).
                    weight = self.weight
                    comfy.ops.run_every_op()
                    out = self._runtime.replay(input, weight._qdata, weight._params.scale, self.bias,
                                               self._parameters.get("input_smooth"))
                    if out is not None:
                        return out
                if not self.is_int8 or getattr(self, "comfy_force_cast_weights", False):
                    if plan.fp8_fast and self.weight.dtype == torch.float8_e4m3fn and not self.training:
                        out = comfy.ops.fp8_linear(self, input)
                        if out is not None:
                            return out
                    return super().forward(input, *args, **kwargs)
                comfy.ops.run_every_op()
                if self._resident_mode() and self.weight.device == input.device:
                    return self._run(input, self.weight, self.bias, cache=True)
                # Offloaded / dynamic-VRAM / lowvram-LoRA: ComfyUI moves the weight (and applies patches) for us,
                # exactly as for its native int8 layers; nothing is cached for tensors of one call.
                self._runtime.replays.clear()
                weight, bias, offload_stream = comfy.ops.cast_bias_weight(
                    self, None, dtype=self.weight.dtype, device=input.device, bias_dtype=input.dtype,
                    offloadable=True, compute_dtype=input.dtype, want_requant=True)
                # A layer streamed with patches (LoRA on a partially loaded model) comes back dequantized and
                # patched: requantized per channel here, as set_weight does once at a full load, so the layer stays
                # int8 and gives what the fully loaded model gives (ComfyUI's own int8 layers compute these in 16
                # bits). Per call: float32 rotation, no check that would wait for the GPU (requantize_streamed).
                quantized = weight if isinstance(weight, QuantizedTensor) else self._quantized_like(
                    *requantize_streamed(weight, _group(self.weight)))
                out = self._run(input, quantized, bias, cache=False)
                comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)
                return out

            def _resident_mode(self) -> bool:
                """ComfyUI runs this layer's weight as it is (no cast, offload or per-call patch)."""
                return not (self.comfy_cast_weights or self.weight_function or self.bias_function
                            or getattr(self, "comfy_force_cast_weights", False))

            def _run(self, x: torch.Tensor, weight, bias, cache: bool) -> torch.Tensor:  # noqa: ANN001
                smooth = self._parameters.get("input_smooth")
                if smooth is not None and smooth.device != x.device:
                    smooth = smooth.to(x.device)
                return self._runtime(x, weight._qdata, weight._params.scale, bias, _group(weight), smooth, cache)

            def backend_for(self, device: torch.device) -> Backend:
                """The backend this layer runs on ``device``; for a resident int8 weight, its persistent per-device
                buffers are allocated here too (the lazy compile calls this before tracing)."""
                weights = None
                if self.is_int8:
                    w = self.weight
                    weights = Int8Weights(w._qdata, w._params.scale, self.bias, _group(w),
                                          self._parameters.get("input_smooth"))
                return self._runtime.prepare(device, weights)

    Int8Ops.__name__ = "Int8W8A8Ops"
    return Int8Ops
