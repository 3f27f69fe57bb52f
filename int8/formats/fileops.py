"""File handling that is safe with hostile inputs and on Windows: regular files only, umask-honouring output
modes, and an atomic replace that waits out a reader holding the target open.

- A FIFO, socket or device given as a checkpoint would block ``open`` forever (a FIFO with no writer) or stream
  endless bytes, so inputs are opened non-blocking and refused unless ``fstat`` says regular file; checking the
  open descriptor (not the path) leaves no window for the path to be swapped.
- ``tempfile.mkstemp`` creates 0600 files; a finished output gets the mode ``open(..., "w")`` would have given
  it (0666 minus the umask), or the mode of the file it replaces, so a ComfyUI running as another user can read it.
- On Windows ``os.replace`` raises ``PermissionError`` while another process (ComfyUI, an antivirus scanner, an
  indexer) has the target open; that is usually over in moments, so the replace is retried with backoff.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointError

__all__ = ["check_regular", "open_regular", "output_mode", "replace_with_retry", "REPLACE_DELAYS_S"]

# Total ~3 s: long enough for a scanner or a reader to let go, short enough that a user is not left waiting.
REPLACE_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_regular(path: str | Path, mode: int, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``mode`` (an ``st_mode``) is a regular file."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise CheckpointError(path, "is a folder, not a checkpoint file.", "Pass the .safetensors file inside it.")
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
    raise CheckpointError(path, f"is {kind}, not a regular {what} file; reading or replacing it could block "
                          "forever or never end.", "Pass the path of a .safetensors file on disk.")


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file without blocking on it."""
    nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFOs that could block the open
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))  # O_BINARY: Windows only
    try:
        check_regular(path, os.fstat(fd).st_mode)
        if nonblock:
            os.set_blocking(fd, True)  # a regular file: plain blocking reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _umask() -> int:
    # /proc tells the umask without changing it; os.umask can only be read by setting it, which races with
    # any other thread creating a file at that moment, so it is the fallback.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass  # not Linux, or an old kernel without the field: ask the process instead
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(out_path: str | Path) -> int:
    """Permission bits for a new file at ``out_path``: those of the file it replaces, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(out_path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def replace_with_retry(src: str, dst: str | Path, delays: tuple[float, ...] | None = None) -> None:
    """``os.replace(src, dst)``, retried after each of ``delays`` (default :data:`REPLACE_DELAYS_S`) while it raises
    ``PermissionError`` (on Windows: another process has ``dst`` open). Raises :class:`CheckpointError` naming
    ``dst`` when it never succeeds; ``src`` is left for the caller to remove."""
    delays = REPLACE_DELAYS_S if delays is None else delays
    for attempt in range(len(delays) + 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError as exc:
            if attempt == len(delays):
                raise CheckpointError(dst, f"could not be replaced ({exc.strerror or exc}): another program (ComfyUI, "
                                      "an antivirus or a file indexer) has it open, or the folder is read-only.",
                                      "Close the program using it (in ComfyUI: unload the model) and run again, or "
                                      "write to another name.") from exc
            time.sleep(delays[attempt])
