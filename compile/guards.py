"""The TorchDynamo guard filter: drop guards on ``transformer_options``, as ComfyUI's TorchCompileModel does.

ComfyUI passes a fresh ``transformer_options`` dict (sigmas, cond indices, patches...) into the model on every
step; guards on its contents would recompile at each step. Dropping them is what the stock node does, at the same
cost: a compiled graph reuses whatever it read from those options when it was traced.
"""

from __future__ import annotations

__all__ = ["TransformerOptionsGuardFilter"]


class TransformerOptionsGuardFilter:
    """Callable ``guard_filter_fn``: keep every guard whose name does not mention ``transformer_options``.

    ``dropped`` collects the names of the guards it removed, so tests and ``log_compile`` can show what it did.
    """

    needle = "transformer_options"

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def __call__(self, guard_entries: list) -> list[bool]:
        keep = []
        for entry in guard_entries:
            name = str(getattr(entry, "name", ""))
            keep.append(self.needle not in name)
            if not keep[-1]:
                self.dropped.append(name)
        return keep
