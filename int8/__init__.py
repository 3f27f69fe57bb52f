"""The INT8 W8A8 engine. Knows nothing of ComfyUI: it imports only torch (and triton when present)."""

from .backends.base import Backend
from .backends.registry import BackendUnavailableError, backend_names, get_backend, resolve_backend
from .config import OUTLIER_METHODS, SMALL_BATCH_FALLBACKS, Int8Config
from .hadamard import build_hadamard, rotate_activation, rotate_weight
from .linear import Int8Linear
from .quantize import (
    NonFiniteWeightError,
    dequantize,
    int8_linear_reference,
    quantization_error_bound,
    quantize_per_channel,
    quantize_per_tensor,
    quantize_per_token,
)
from .weights import Int8Weights

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Int8Config",
    "Int8Linear",
    "Int8Weights",
    "NonFiniteWeightError",
    "OUTLIER_METHODS",
    "SMALL_BATCH_FALLBACKS",
    "backend_names",
    "build_hadamard",
    "dequantize",
    "get_backend",
    "int8_linear_reference",
    "quantization_error_bound",
    "quantize_per_channel",
    "quantize_per_tensor",
    "quantize_per_token",
    "resolve_backend",
    "rotate_activation",
    "rotate_weight",
]
