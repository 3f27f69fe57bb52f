"""Log a message once per process: a fallback or a choice is reported when it is made, not on every call."""

from __future__ import annotations

import functools
import logging

__all__ = ["log_once", "clear_log_once", "exception_line"]


@functools.cache
def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Emit ``message`` on ``logger`` at ``level`` the first time this exact (logger, level, message) comes."""
    logger.log(level, message)


def exception_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of ``exc``'s message (at most ``limit`` characters of it): what a one-line fallback
    message says about the failure (a compile error's message can be the whole kernel source)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}"


def clear_log_once() -> None:
    """Forget what was logged (tests use this to see a message again)."""
    log_once.cache_clear()
