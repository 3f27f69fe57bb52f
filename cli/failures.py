"""How a command ends when it fails or is interrupted: one line on stderr and a non-zero exit, never a traceback
unless ``--debug`` asks for it.

Signals: SIGTERM (``kill``, a service manager) and SIGHUP (the terminal closed) would end Python without running
``finally`` blocks or ``with`` exits, leaving a convert's full-size hidden ``.partial`` file behind. While a
command runs they raise :class:`Interrupted` instead, so the writer's cleanup runs exactly as it does for Ctrl-C
(SIGINT, already a ``KeyboardInterrupt``). Exit status is 128 + the signal number, as a shell reports it.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "signals_raise", "one_line", "print_error", "EXIT_FAILED"]

EXIT_FAILED = 1
_MAX_CHARS = 2000  # a hostile file can put megabytes into a tensor name; an error line stays readable
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Interrupted(BaseException):
    """A terminating signal arrived. A BaseException (like KeyboardInterrupt), so no ``except Exception`` on the
    way up swallows it, while every ``finally`` and ``__exit__`` (the writer's cleanup) still runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` (once: a repeat during cleanup is ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python only lets the main thread install handlers; embedded callers keep theirs
        return
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]  # Windows has no SIGHUP
    previous: dict[int, object] = {}

    def handler(signum: int, frame: object) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup this exception starts finish
        raise Interrupted(signum)

    for name in names:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def one_line(text: str) -> str:
    """``text`` with control characters (newlines included) escaped and its length capped."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + f"... ({len(text)} chars)"


def print_error(message: str) -> None:
    """``error: <message>`` as one line on stderr."""
    print("error: " + one_line(message), file=sys.stderr)
