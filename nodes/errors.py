"""Errors the loader node raises, each saying what failed, where, and what to change.

They subclass the built-in exception a caller would expect (``FileNotFoundError``, ``ValueError``,
``RuntimeError``), so ComfyUI shows the message in its error dialog and scripts can still catch them broadly.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ModelFileNotFoundError", "UnsupportedWeightDtypeError", "QuantizationFailureError"]


class ModelFileNotFoundError(FileNotFoundError):
    """The chosen ``unet_name`` is not in any ``diffusion_models`` folder."""

    def __init__(self, name: str, folders: Sequence[str]) -> None:
        searched = "\n".join(f"  - {f}" for f in folders) or "  (no diffusion_models folder is configured)"
        super().__init__(
            f"Model file not found: '{name}'. Folders searched (diffusion_models):\n{searched}\n"
            "Put the file into one of these folders (or add a folder in extra_model_paths.yaml), then press "
            "'r' in the graph editor to refresh the file list and pick it again."
        )
        self.name = name
        self.folders = list(folders)


class UnsupportedWeightDtypeError(ValueError):
    """The ``weight_dtype`` choice cannot run on the load device."""

    def __init__(self, choice: str, device_name: str, reason: str) -> None:
        super().__init__(
            f"Unsupported weight dtype '{choice}' on {device_name}: {reason}. weight_dtype only applies to the "
            "layers kept in high precision; choose 'default' (the checkpoint's 16-bit dtype) or 'fp8_e4m3fn' "
            "(stored in fp8, computed in 16-bit, runs on any GPU)."
        )
        self.choice = choice
        self.device_name = device_name


class QuantizationFailureError(RuntimeError):
    """Quantizing one layer at load failed."""

    def __init__(self, layer: str, file: str, reason: str, outlier_method: str) -> None:
        fixes = ["set on_the_fly_quantization to false to load the model in 16-bit"]
        if outlier_method != "none":
            fixes.insert(0, f"set outlier_method to 'none' (it is '{outlier_method}')")
        fixes.append("or pick a model_type preset that keeps this layer in 16-bit")
        super().__init__(
            f"Quantization failure in layer '{layer}' of '{file}': {reason}. To load anyway: " + "; ".join(fixes) + "."
        )
        self.layer = layer
        self.file = file
