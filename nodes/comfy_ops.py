"""ComfyUI glue: the ``custom_operations`` class the loader hands to ``comfy.sd``, built per load by a factory.

The Linear of this ops class decides per layer while ComfyUI loads the state dict:
- int8 keys present (``comfy_quant`` int8_tensorwise + ``weight_scale``): the file is pre-quantized, load as is;
- a 16-bit weight, ``on_the_fly_quantization`` on and the preset says quantize: quantize it here (progress per layer);
- otherwise: keep it in high precision, stored in the ``weight_dtype`` the user chose, exactly as stock ComfyUI.
Int8 weights are stored as ComfyUI's own ``QuantizedTensor`` (``TensorWiseINT8Layout``, per-channel scale), so
ComfyUI's offloading, partial / dynamic VRAM loading, pinning, LoRA patching (``convert_weight``/``set_weight``)
and ``state_dict`` saving treat them like its native int8; only ``forward`` runs our W8A8 backends.
ComfyUI is imported inside :func:`make_int8_ops`, so importing this module needs no ComfyUI.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..int8.backends.base import Backend
from ..int8.backends.registry import resolve_backend
from ..int8.config import Int8Config
from ..int8.launch.eager_plan import planned_call, plans_apply, replay_key, replayable
from ..int8.launch.host import is_capturing
from ..int8.quantize import NonFiniteWeightError
from ..int8.weights import INT8_FORMAT, Int8Weights, per_channel_scale
from .errors import QuantizationFailureError
from .lora import requantize_per_channel

__all__ = ["Int8LoadPlan", "LoadReport", "make_int8_ops", "INT8_FORMAT"]

log = logging.getLogger("comfy_int8_w8a8")

_HIGH_PRECISION = (torch.float16, torch.bfloat16, torch.float32)

# decide(layer, weight) -> None to quantize, else the reason the layer stays in high precision.
LayerDecider = Callable[[str, torch.Tensor], "str | None"]
# quantize(layer, weight, bias) -> ComfyUI-native int8 tensors of that layer, keys without the layer prefix.
LayerQuantizer = Callable[[str, torch.Tensor, "torch.Tensor | None"], dict]


@dataclass
class LoadReport:
    """What one load did with each Linear, for the single summary line the loader logs."""

    prequantized: int = 0
    quantized_at_load: int = 0
    kept: Counter = field(default_factory=Counter)  # reason -> number of layers

    def summary(self, file: str) -> str:
        int8 = self.prequantized + self.quantized_at_load
        kept = sum(self.kept.values())
        reasons = "; ".join(f"{n} {reason}" for reason, n in self.kept.most_common())
        text = (f"INT8 W8A8: '{file}': {int8} Linear layers in int8 ({self.prequantized} pre-quantized, "
                f"{self.quantized_at_load} quantized at load), {kept} kept in high precision")
        return text + (f" ({reasons})." if reasons else ".")


@dataclass
class Int8LoadPlan:
    """Everything one load decides; one ops class is built from it, so nothing is shared between loads.

    file: checkpoint path (for messages). int8_config: how int8 layers run. on_the_fly: quantize 16-bit layers.
    decide / quantize: the preset's decision and the engine's quantizer (see the type aliases above).
    keep_dtype: storage dtype of high-precision Linears (None: the model's dtype; fp8 for ``fp8_*`` choices).
    fp8_fast: high-precision fp8 Linears use fp8 matrix multiply (``fp8_e4m3fn_fast``).
    outlier_method: for error messages. quantize_device: where on-the-fly quantization computes (the GPU if any).
    on_layer_quantized: progress callback, called once per layer quantized at load.
    """

    file: str
    int8_config: Int8Config
    on_the_fly: bool
    decide: LayerDecider
    quantize: LayerQuantizer
    keep_dtype: torch.dtype | None = None
    fp8_fast: bool = False
    outlier_method: str = "none"
    quantize_device: torch.device | None = None
    on_layer_quantized: Callable[[], None] | None = None
    report: LoadReport = field(default_factory=LoadReport)
    _backends: dict = field(default_factory=dict, repr=False)
    _plan_rows: dict = field(default_factory=dict, repr=False)

    def backend_for(self, device: torch.device) -> Backend:
        """Resolved once per device for the whole model (``auto`` logs its choice once)."""
        backend = self._backends.get(device)
        if backend is None:
            backend = self._backends[device] = resolve_backend(self.int8_config.runtime_backend, device)
        return backend

    def plan_rows(self, backend: Backend) -> int:
        """Eager calls with at most this many rows may replay a launch plan on ``backend`` (0: never)."""
        rows = self._plan_rows.get(backend.name)
        if rows is None:
            rows = self._plan_rows[backend.name] = backend.plan_rows(self.int8_config)
        return rows

    def quantize_layer(self, layer: str, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
        """Quantize one layer on ``quantize_device``; errors become :class:`QuantizationFailureError`."""
        device = self.quantize_device or weight.device
        try:
            tensors = self.quantize(layer, weight.to(device), None if bias is None else bias.to(device))
        except (NonFiniteWeightError, ValueError, RuntimeError) as exc:
            raise QuantizationFailureError(layer, self.file, str(exc), self.outlier_method) from exc
        if self.on_layer_quantized is not None:
            self.on_layer_quantized()
        # The comfy_quant metadata stays on the CPU: ComfyUI parses it with .numpy() (a state dict on the GPU
        # would otherwise fail in ComfyUI's loader).
        return {k: v if k == "comfy_quant" else v.to(weight.device) for k, v in tensors.items()}


def _is_float_weight(weight: torch.Tensor | None) -> bool:
    return weight is not None and weight.dim() == 2 and weight.dtype in _HIGH_PRECISION


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
                self._packed: tuple | None = None  # (weakref to the int8 data, device, packed layout)
                self._eager_plans: tuple | None = None  # (weakref to weight, weakref to bias or None, device, plans)
                # replay_key(input) -> (plan, weakrefs to the int8 data, scale and bias it was built on, output
                # shape): see _replay
                self._replays: dict[tuple, tuple] = {}

            # ---- loading -------------------------------------------------------------------------------------
            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # noqa: ANN001
                layer = prefix[:-1]
                weight = state_dict.get(prefix + "weight")
                if prefix + "comfy_quant" in state_dict:
                    plan.report.prequantized += 1
                elif not _is_float_weight(weight):
                    pass  # missing weight or an unusual dtype: ComfyUI's own handling below
                else:
                    reason = "on_the_fly_quantization is off" if not plan.on_the_fly else plan.decide(layer, weight)
                    if reason is None:
                        tensors = plan.quantize_layer(layer, weight, state_dict.get(prefix + "bias"))
                        state_dict.update({prefix + k: v for k, v in tensors.items()})
                        plan.report.quantized_at_load += 1
                    else:
                        plan.report.kept[reason] += 1
                smooth = state_dict.pop(prefix + "input_smooth", None)
                super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
                self._finish_load(smooth)

            def _finish_load(self, smooth: torch.Tensor | None) -> None:
                if self.is_int8:
                    scale = self.weight._params.scale
                    if scale.numel() == 1:
                        # Per-tensor files become per-channel: same numbers, one kernel path, per-channel requant.
                        params = dataclasses.replace(self.weight._params,
                                                     scale=per_channel_scale(scale, self.out_features))
                        self.weight = torch.nn.Parameter(QuantizedTensor(self.weight._qdata, self.weight._layout_cls, params),
                                                         requires_grad=False)
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
                old = self.weight
                group = old._params.convrot_groupsize if old._params.convrot else 0
                q, scale = requantize_per_channel(weight, group, self._layer_name())
                params = dataclasses.replace(old._params, scale=scale, orig_dtype=old.dtype)
                new = QuantizedTensor(q, old._layout_cls, params)
                if return_weight:
                    return new
                self.weight = torch.nn.Parameter(new, requires_grad=False)
                return None

            def _layer_name(self) -> str:
                return getattr(self, "seed_key", None) or f"Linear({self.in_features}->{self.out_features})"

            # ---- forward ---------------------------------------------------------------------------------------
            def forward(self, input, *args, **kwargs):  # noqa: A002, ANN001, ANN201
                if not torch.compiler.is_compiling() and self._replays:
                    out = self._replay(input)
                    if out is not None:
                        return out
                if not self.is_int8 or getattr(self, "comfy_force_cast_weights", False):
                    if plan.fp8_fast and self.weight.dtype == torch.float8_e4m3fn and not self.training:
                        out = comfy.ops.fp8_linear(self, input)
                        if out is not None:
                            return out
                    return super().forward(input, *args, **kwargs)
                comfy.ops.run_every_op()
                resident = (not self.comfy_cast_weights and not self.weight_function and not self.bias_function
                            and self.weight.device == input.device)
                if resident:
                    return self._int8_linear(input, self.weight, self.bias, cache_pack=True)
                # Offloaded / dynamic-VRAM / lowvram-LoRA: ComfyUI moves the weight (and applies patches) for us,
                # exactly as for its native int8 layers.
                weight, bias, offload_stream = comfy.ops.cast_bias_weight(
                    self, None, dtype=self.weight.dtype, device=input.device, bias_dtype=input.dtype,
                    offloadable=True, compute_dtype=input.dtype, want_requant=True)
                if isinstance(weight, QuantizedTensor):
                    out = self._int8_linear(input, weight, bias, cache_pack=False)
                else:  # a patched weight that came back dequantized: exact 16-bit result for this layer
                    out = torch.nn.functional.linear(input, weight.to(input.dtype), bias)
                comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)
                return out

            def backend_for(self, device: torch.device) -> Backend:
                """The backend this layer runs on ``device``; for a resident int8 weight, its persistent per-device
                buffers are allocated here too (the lazy compile calls this before tracing)."""
                backend = plan.backend_for(device)
                if self.is_int8 and self.weight.device == device:
                    backend.prepare_device_state(self._int8_weights(self.weight, self.bias, device, None),
                                                 plan.int8_config)
                return backend

            def _int8_weights(self, weight, bias, device: torch.device, packed: object) -> Int8Weights:  # noqa: ANN001
                params = weight._params
                smooth = getattr(self, "input_smooth", None)
                if smooth is not None and smooth.device != device:
                    smooth = smooth.to(device)
                return Int8Weights(weight._qdata, params.scale, bias, params.convrot_groupsize if params.convrot else 0,
                                   smooth, packed)

            def _int8_linear(self, x: torch.Tensor, weight, bias, cache_pack: bool) -> torch.Tensor:  # noqa: ANN001
                backend = plan.backend_for(x.device)
                x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (a reshape call costs ~2 us)
                y = self._planned(backend, x2, weight, bias) if cache_pack else None
                if y is not None:
                    self._remember_replay(x, x2, weight, bias)
                else:
                    packed = self._packed_for(backend, weight._qdata, x.device) if cache_pack else None
                    w = self._int8_weights(weight, bias, x.device, packed)
                    y = backend.linear(x2, w, plan.int8_config)
                return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

            def _replay(self, x: torch.Tensor) -> torch.Tensor | None:
                """An eager few-rows call with an input layout seen before on this resident int8 layer: its launch
                plan replayed with the least Python (at a few rows the CPU time is the layer's cost), or None for
                the normal path. Holds the layer's tensors weakly, like the plans (ComfyUI may replace or free them);
                the conditions are forward's resident ones."""
                hit = self._replays.get(replay_key(x))
                if hit is None or is_capturing():
                    return None
                run, qdata_ref, scale_ref, bias_ref, out_shape = hit
                weight, qdata = self.weight, qdata_ref()
                if (qdata is not None and qdata is getattr(weight, "_qdata", None) and scale_ref() is weight._params.scale
                        and (bias_ref() if bias_ref is not None else None) is self.bias and not self.comfy_cast_weights
                        and not self.weight_function and not self.bias_function
                        and not getattr(self, "comfy_force_cast_weights", False)):
                    comfy.ops.run_every_op()
                    out = run(x, out_shape)
                    if out is not None:
                        return out
                self._replays.clear()
                return None

            def _remember_replay(self, x: torch.Tensor, x2: torch.Tensor, weight, bias) -> None:  # noqa: ANN001
                run = replayable(self._eager_plans[3], x, x2) if self._eager_plans is not None else None
                if run is None:
                    return
                self._replays[replay_key(x)] = (run, weakref.ref(weight._qdata), weakref.ref(weight._params.scale),
                                      None if bias is None else weakref.ref(bias), (*x.shape[:-1], self.out_features))

            def _planned(self, backend: Backend, x2: torch.Tensor, weight, bias) -> torch.Tensor | None:  # noqa: ANN001
                """An eager few-rows call of a resident layer through the backend's launch plan (see
                ``int8/kernels/eager_plan.py``), or None for the normal path. The plans belong to this layer's
                current weight and bias objects (held weakly: ComfyUI may replace or offload them)."""
                if not plans_apply(x2, plan.plan_rows(backend)):
                    return None
                state = self._eager_plans
                if (state is None or state[0]() is not weight or state[2] != x2.device
                        or (state[1]() if state[1] is not None else None) is not bias):
                    state = self._eager_plans = (weakref.ref(weight), None if bias is None else weakref.ref(bias),
                                                 x2.device, {})
                return planned_call(state[3], x2, backend.eager_plan, lambda: self._int8_weights(weight, bias, x2.device, None),
                                    plan.int8_config)

            def _packed_for(self, backend: Backend, qdata: torch.Tensor, device: torch.device) -> object | None:
                if not plan.int8_config.prepack_int8_weights:
                    return None
                cached = self._packed
                # A weakref, so a weight replaced by a LoRA bake or a device move is never kept alive by the cache.
                if cached is None or cached[0]() is not qdata or cached[1] != device:
                    cached = self._packed = (weakref.ref(qdata), device, backend.prepack(qdata))
                return cached[2]

    Int8Ops.__name__ = "Int8W8A8Ops"
    return Int8Ops
