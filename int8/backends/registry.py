"""The backend registry: ``register_backend`` fills it (the three built-in backends are registered here, the
backend modules know nothing of the registry), ``resolve_backend`` picks one once at load."""

from __future__ import annotations

import logging

import torch

from ..log_once import log_once
from .base import Backend
from .reference import ReferenceBackend
from .torch_int_mm import TorchIntMMBackend
from .triton_backend import TritonBackend

__all__ = ["register_backend", "resolve_backend", "backend_names", "get_backend", "BackendUnavailableError"]

log = logging.getLogger("comfy_int8_w8a8")
_BACKENDS: dict[str, Backend] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly chosen runtime backend cannot run here."""


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator (third-party backends): instantiate and register a backend under ``cls.name``."""
    _BACKENDS[cls.name] = cls()
    return cls


# The built-in backends; their modules import Triton lazily, so registering them never fails.
for _builtin in (ReferenceBackend, TorchIntMMBackend, TritonBackend):
    register_backend(_builtin)


def backend_names() -> list[str]:
    """Choices for the ``runtime_backend`` input: ``auto`` then every registered backend, best first."""
    ordered = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    return ["auto"] + [b.name for b in ordered]


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"Unknown runtime_backend '{name}'. Choose one of: {', '.join(backend_names())}.")
    return _BACKENDS[name]


def resolve_backend(name: str = "auto", device: torch.device | str = "cpu") -> Backend:
    """Return the backend to use on ``device``.

    ``auto`` takes the highest-priority backend that can run there and logs the choice once; where no
    int8 tensor-core path exists (CPU, GPUs below sm_75) it also warns once. An explicit name that
    cannot run raises :class:`BackendUnavailableError` with the reason; it never silently downgrades.
    """
    device = torch.device(device)
    if name != "auto":
        backend = get_backend(name)
        reason = backend.unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(
                f"runtime_backend '{name}' cannot run on {device}: {reason}. Choose 'auto' to use the best "
                f"available backend ({', '.join(backend_names())})."
            )
        return backend
    skipped = []
    for backend in sorted(_BACKENDS.values(), key=lambda b: -b.priority):
        reason = backend.unavailable_reason(device)
        if reason is None and not backend.auto_eligible(device):
            reason = f"not picked automatically on {device.type}"
        if reason is None:
            log_once(log, logging.INFO, f"INT8 W8A8: runtime_backend auto chose '{backend.name}' on {device}.")
            if skipped and device.type == "cuda":  # a faster backend could not run here: say why, once
                log_once(log, logging.WARNING, f"INT8 W8A8: runtime_backend auto passed over {'; '.join(skipped)}; "
                         f"using '{backend.name}'.")
            if backend.name == "reference" or device.type != "cuda":
                log_once(
                    log, logging.WARNING,
                    f"INT8 W8A8: no int8 tensor-core path on {device} ({'; '.join(skipped) or 'CPU'}); "
                    f"using '{backend.name}'. It gives the same results, but slower than on an NVIDIA GPU "
                    "with int8 tensor cores (sm_75 or newer)."
                )
            return backend
        skipped.append(f"{backend.name}: {reason}")
    raise BackendUnavailableError("No INT8 backend can run on " + str(device) + ": " + "; ".join(skipped))
