"""What one load decides, without ComfyUI: the per-load plan the ops class (:mod:`.comfy_ops`) consults, and the
report of what it did with each Linear."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..int8.backends.base import Backend
from ..int8.config import Int8Config
from ..int8.layer import BackendChoice
from ..int8.quantize import NonFiniteWeightError
from .errors import QuantizationFailureError

__all__ = ["Int8LoadPlan", "LoadReport", "LayerDecider", "LayerQuantizer"]

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
    on_layer_tensors: called with ``(layer, source weight, quantized tensors)`` after each layer quantized at load
    (the weight cache records the quantized state dict from it).
    cached_comfy_quant: layer -> its ``comfy_quant`` entry, held back from ComfyUI on a weight-cache hit (the ops
    Linear puts it back when it loads the layer; whatever is left after the load was not loaded).
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
    on_layer_tensors: Callable[[str, torch.Tensor, dict], None] | None = None
    cached_comfy_quant: dict[str, torch.Tensor] = field(default_factory=dict)
    report: LoadReport = field(default_factory=LoadReport)
    backends: BackendChoice = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.backends = BackendChoice(self.int8_config)  # one for the whole model: ``auto`` resolves once per device

    def backend_for(self, device: torch.device) -> Backend:
        """The backend int8 layers run on ``device`` (resolved once per device for the whole model)."""
        return self.backends.backend_for(device)

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
        tensors = {k: v if k == "comfy_quant" else v.to(weight.device) for k, v in tensors.items()}
        if self.on_layer_tensors is not None:
            self.on_layer_tensors(layer, weight, tensors)
        return tensors
