"""Run a compiled module, and if compiling it fails, log once and run the eager module instead.

torch.compile compiles on the first CALL of the compiled module, so a failure (no C++ compiler for inductor,
an op dynamo cannot trace under ``fullgraph``, a lowering bug) surfaces there, inside sampling. The wrapper
catches the exception types torch raises from dynamo and inductor, not every exception: an error of the model
itself (a shape mismatch, out of memory) still reaches the user unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch.nn as nn

__all__ = ["FAILED_MESSAGE", "compile_error_types", "FallbackState", "CompiledWithFallback"]

log = logging.getLogger("comfy_int8_w8a8")

FAILED_MESSAGE = "INT8 Lazy Torch Compile: compile failed; running uncompiled."


@functools.cache
def compile_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "compiling failed" rather than "the model failed".

    ``TorchDynamoException`` covers ``BackendCompilerFailed`` (and inductor's ``InductorError``, its subclass),
    ``Unsupported`` (fullgraph graph breaks) and dynamo's internal errors; the inductor ones cover C++/CUDA
    compiler failures and lowering errors raised outside the backend wrapper.
    """
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc

    types: list[type[BaseException]] = [dynamo_exc.TorchDynamoException]
    for name in ("OperatorIssue", "SubgraphLoweringException", "InvalidCxxCompiler", "CppWrapperCodegenError",
                 "CppCompileError"):
        exc_type = getattr(inductor_exc, name, None)  # the set varies across torch versions
        if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
            types.append(exc_type)
    return tuple(types)


def _describe(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"


class FallbackState:
    """Shared by every compiled module of one lazy compile: after the first failure all of them run eagerly."""

    def __init__(self) -> None:
        self.failed = False
        self.reason: str | None = None

    def record_failure(self, path: str, exc: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        self.reason = f"compiling '{path}' raised {_describe(exc)}"
        cause = getattr(exc, "inner_exception", None) or exc.__cause__
        if cause is not None and cause is not exc:
            self.reason += f" (caused by {_describe(cause)})"
        log.warning(
            "%s Reason: %s. Sampling goes on without compilation (same results, eager speed). To retry, fix the "
            "reason (e.g. install a C++ compiler for inductor, turn fullgraph off) and queue the prompt again.",
            FAILED_MESSAGE, self.reason,
        )


class CompiledWithFallback(nn.Module):
    """Stands in for ``eager`` at ``path`` during a sampling call: runs ``compiled`` until compiling fails.

    Neither module is registered as a child (they are stored outside ``_modules``), so swapping this wrapper
    into the model does not change its state dict or parameter list.
    """

    def __init__(self, compiled: Callable, eager: nn.Module, path: str, state: FallbackState) -> None:
        super().__init__()
        self.__dict__["compiled"] = compiled
        self.__dict__["eager"] = eager
        self.path = path
        self.state = state

    def __getattr__(self, name: str):  # noqa: ANN204
        # Model code sometimes reads attributes of its blocks (sizes, flags); answer them from the eager block.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["eager"], name)

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - forwards whatever the block takes
        if self.state.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except compile_error_types() as exc:
            # A compile error is raised before the failing graph runs, so the inputs are still as the caller
            # passed them (even for blocks that add into their inputs in place): running the eager module from the
            # start gives the result the compiled one would have. If the eager module raises too, the model itself
            # is at fault: that error propagates and compiling stays on.
            result = self.eager(*args, **kwargs)
            self.state.record_failure(self.path, exc)
            return result
