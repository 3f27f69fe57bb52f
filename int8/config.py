"""Runtime options of an int8 layer, checked once when they are built."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SMALL_BATCH_FALLBACKS", "OUTLIER_METHODS", "Int8Config"]

SMALL_BATCH_FALLBACKS = ("always", "only_small_layers", "never")
OUTLIER_METHODS = ("hadamard", "smooth", "none")


@dataclass(frozen=True)
class Int8Config:
    """How an :class:`~.linear.Int8Linear` runs.

    runtime_backend: ``auto`` or a registered backend name (``reference``, ``torch_int_mm``, ``triton``).
    small_batch_fallback: inputs with at most ``small_batch_rows`` rows run a 16-bit matmul on the dequantized
        weight instead of the int8 GEMM (``always``), only in layers with at most ``small_layer_elements``
        weight elements (``only_small_layers``), or never.
    small_batch_rows: the row threshold of that fallback (rows = tokens x batch of the call).
    small_layer_elements: N*K at or below which a layer counts as small.
    """

    runtime_backend: str = "auto"
    small_batch_fallback: str = "always"
    # Measured on an H100 (docs/results/kernels_h100.md, CUDA-graph GPU time): the W8A16 kernel beats the Triton W8A8
    # path up to 32 rows on 3072->12288 / 3072->18432 layers (at 48 rows W8A8 wins) and up to 128 rows on 3072->3072.
    small_batch_rows: int = 32
    small_layer_elements: int = 3072 * 3072

    def __post_init__(self) -> None:
        if self.small_batch_fallback not in SMALL_BATCH_FALLBACKS:
            raise ValueError(
                f"small_batch_fallback must be one of {', '.join(SMALL_BATCH_FALLBACKS)}, "
                f"got '{self.small_batch_fallback}'."
            )
        if self.small_batch_rows < 0:
            raise ValueError(f"small_batch_rows must be >= 0, got {self.small_batch_rows}.")
        if self.small_layer_elements < 0:
            raise ValueError(f"small_layer_elements must be >= 0, got {self.small_layer_elements}.")

    def uses_small_batch_path(self, rows: int, weight_elements: int) -> bool:
        """True when a call with ``rows`` input rows on a layer of ``weight_elements`` takes the 16-bit path."""
        if self.small_batch_fallback == "never" or rows > self.small_batch_rows:
            return False
        if self.small_batch_fallback == "only_small_layers":
            return weight_elements <= self.small_layer_elements
        return True
