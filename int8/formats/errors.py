"""The one error type the checkpoint code raises, with messages that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointError", "PICKLE_SUFFIXES", "pickle_refusal"]

# Extensions of pickle-based PyTorch checkpoints: loading one runs arbitrary code, so we never do.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message names the file and what to do."""

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"'{self.path}': " if self.path else ""
        super().__init__(f"{where}{problem}" + (f" {fix}" if fix else ""))


def pickle_refusal(path: str | Path) -> CheckpointError:
    """The error for a pickled checkpoint: we refuse to unpickle and say how to convert it safely."""
    return CheckpointError(
        path,
        "is a pickled PyTorch checkpoint; this pack only reads safetensors, because unpickling can run arbitrary code.",
        "If you trust its source, convert it once in a sandbox: python -c \"import torch, safetensors.torch as st; "
        "sd = torch.load('IN', map_location='cpu', weights_only=True); "
        "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\" "
        "(weights_only=True refuses code objects), or download the .safetensors release of the model.",
    )
