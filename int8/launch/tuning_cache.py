"""Tuned kernel choices kept on disk, so a new process launches each GEMM shape with the config an earlier one timed.

Tuning a shape costs seconds (every candidate timed at the clocks it sustains, :mod:`tuning`) and a Flux model has a
few dozen shapes per resolution: without this store every restart pays that again before the first image. Each
tuner keeps its decisions in a :class:`Table` (a namespace: ``tma_config``, ``gemm_choice``, ``pointer_config``),
keyed by what the tuner keys them by (M bucket, N, K, dtypes, ...); the launchers look a key up before tuning and
record the pick after.

Where: ``INT8_W8A8_TUNING_CACHE`` (a directory; ``0``/``off`` disables the store), else the directory the
application named with :func:`set_directory` (the ComfyUI node: a folder under ComfyUI's user directory), else the
user cache: ``$XDG_CACHE_HOME`` or ``~/.cache`` (``%LOCALAPPDATA%`` on Windows) ``/comfy_int8_w8a8/tuning``.

One JSON file per *identity*: what a timing depends on besides the shape (GPU name, compute capability as the pack
sees it, SM count, torch, Triton and pack versions). The file name carries a hash of it and the file repeats it; a
file whose identity differs (copied from another machine), that does not parse (truncated, hand-edited) or has the
wrong shape is ignored with one log line, and the next save replaces it. Each namespace's entries also carry a
fingerprint of its candidate list, so editing ``TMA_CONFIGS`` (say) drops that namespace's old decisions, and a
stored value that is not among the current candidates is ignored::

    {"format": 1,
     "identity": {"gpu": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "sm_count": 132, "torch": "2.8.0+cu128",
                  "triton": "3.6.0", "pack": "0.1.0"},
     "candidates": {"tma_config": "3f2a...", "gemm_choice": "9b1c..."},
     "entries": [["tma_config", [4096, 3072, 12288, "torch.bfloat16", "torch.bfloat16", true, true],
                  {"BLOCK_K": 128, "BLOCK_M": 128, ..., "num_ctas": 1, "num_stages": 4, "num_warps": 8}],
                 ["gemm_choice", [4096, 3072, 12288, "torch.bfloat16", "torch.bfloat16", true],
                  [128, 256, 128, 4, 8, 2]], ...]}

Entries are in the order they were added; past :data:`MAX_ENTRIES` the oldest go. A save re-reads the file and
merges (another process's decisions are kept; for one key the last writer wins) and replaces it atomically. A
directory that cannot be written is logged once; decisions then live in memory only. Nothing is recorded while a
CUDA graph is being captured (nothing is timed there either).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from .. import compat
from ..log_once import log_once
from ..version import PACK_VERSION
from .host import capability, is_capturing, sm_count

__all__ = ["ENV", "MAX_ENTRIES", "MISS", "Table", "config_json", "directory", "default_directory", "set_directory",
           "file_for", "forget"]

log = logging.getLogger(__name__)

ENV = "INT8_W8A8_TUNING_CACHE"
MAX_ENTRIES = 4096  # per file: ~40 bytes of key and ~150 of value each, so at most ~1 MB
FORMAT = 1
_OFF = ("0", "off", "false", "no", "none")
_REPLACE_WAITS_S = (0.01, 0.02, 0.05, 0.1, 0.2)  # Windows: os.replace fails while another process has the file open


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()  # what a lookup returns when no usable decision is stored (None is a decision: gemm_choice's TMA)

_app_directory: Path | None = None
_stores: dict[Path, _Store] = {}
_identities: dict[int, dict] = {}  # device index -> identity
_lock = threading.Lock()


# ------------------------------------------------------------------------------------------------------- directories
def set_directory(path: str | os.PathLike | None) -> None:
    """Keep tuned choices in ``path`` (the application's folder; created on the first save), unless
    ``INT8_W8A8_TUNING_CACHE`` is set. None: back to the default."""
    global _app_directory
    _app_directory = Path(path).expanduser() if path is not None else None


def default_directory() -> Path:
    """The user cache folder: ``%LOCALAPPDATA%`` on Windows, else ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfy_int8_w8a8" / "tuning"


def directory() -> Path | None:
    """Where tuned choices are read and written now, or None when ``INT8_W8A8_TUNING_CACHE`` turns the store off."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return None if env.lower() in _OFF else Path(env).expanduser()
    return _app_directory if _app_directory is not None else default_directory()


def file_for(identity: dict) -> str:
    """The file name of ``identity``'s choices: readable GPU and arch, then a hash of the whole identity."""
    digest = hashlib.sha256(_canonical(identity).encode()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", str(identity.get("gpu", "gpu"))).strip("_")[:40] or "gpu"
    major, minor = identity.get("capability", (0, 0))
    return f"{gpu}-sm{major}{minor}-{digest}.json"


def forget() -> None:
    """Drop what this process read or recorded (tests: the next lookup reads the file again, as a new process)."""
    with _lock:
        _stores.clear()
        _identities.clear()


# ------------------------------------------------------------------------------------------------------ the tables
class Table:
    """The decisions of one tuner: ``key`` (tuples of ints, bools, strings, torch dtypes) -> one of ``candidates``.

    ``encode`` turns a candidate into JSON (a ``triton.Config``: :func:`config_json`); a stored value is mapped back
    to the candidate object that encodes to it, so what comes back is the tuner's own config (hooks included), and a
    value no current candidate encodes to is ignored.
    """

    def __init__(self, namespace: str, candidates: Sequence[object],
                 encode: Callable[[object], object] | None = None) -> None:
        encode = encode or config_json
        encoded = [_canonical(encode(c)) for c in candidates]
        if len(set(encoded)) != len(encoded):
            raise ValueError(f"tuning cache '{namespace}': two candidates encode to the same JSON")
        self.namespace = namespace
        self._encode = encode
        self._by_value = dict(zip(encoded, candidates))
        self.fingerprint = hashlib.sha256(_canonical([namespace, encoded]).encode()).hexdigest()[:16]

    def get(self, key: Hashable, device_index: int) -> object:
        """The stored choice for ``key`` on CUDA device ``device_index``, or :data:`MISS` (nothing stored, the store
        off, or a stored value that is not a current candidate)."""
        store = _store_for(device_index)
        if store is None:
            return MISS
        value = store.get(self.namespace, self.fingerprint, _canonical(_jsonable(key)))
        if value is MISS:
            return MISS
        choice = self._by_value.get(_canonical(value), MISS)
        if choice is MISS:
            log_once(log, logging.INFO, f"INT8 W8A8 tuning cache: a stored '{self.namespace}' choice in {store.path} "
                                        "is not among the current candidates; tuning again")
        return choice

    def put(self, key: Hashable, choice: object, device_index: int) -> None:
        """Record ``choice`` (one of the candidates) for ``key`` and save. Nothing is recorded inside a CUDA graph
        capture, nor when the store is off; a failed save is logged once and the call goes on."""
        if is_capturing():
            return
        store = _store_for(device_index)
        if store is None:
            return
        value = _jsonable(self._encode(choice))
        if _canonical(value) not in self._by_value:
            log_once(log, logging.WARNING, f"INT8 W8A8 tuning cache: '{self.namespace}' was given a choice that is "
                                           f"not a candidate ({choice}); not stored")
            return
        key_json = _jsonable(key)
        store.put(_Entry(self.namespace, _canonical(key_json), key_json, value, self.fingerprint))


def config_json(cfg: object) -> dict:
    """A ``triton.Config`` as JSON: its meta-parameters and compile options (what ``Config.all_kwargs()`` lists:
    num_warps, num_stages, num_ctas, maxnreg...). A pre-hook is code, not data: :meth:`Table.get` returns the
    candidate object, which still has it."""
    return {k: _jsonable(v) for k, v in sorted(cfg.all_kwargs().items())}


# ------------------------------------------------------------------------------------------------------- the files
class _Entry(NamedTuple):
    namespace: str
    key_text: str  # canonical JSON of key: the lookup key
    key: object
    value: object
    fingerprint: str  # of the namespace's candidates when the value was chosen


class _Unusable(ValueError):
    """A cache file that must be ignored; ``foreign``: well-formed, but for another identity or format."""

    def __init__(self, reason: str, foreign: bool = False) -> None:
        super().__init__(reason)
        self.foreign = foreign


class _Store:
    """The entries of one file: read on first use, merged with the file and written back on each new decision."""

    def __init__(self, path: Path, identity: dict) -> None:
        self.path, self.identity = path, identity
        self._entries: dict[tuple[str, str], _Entry] | None = None  # None: not read yet
        self._own: dict[tuple[str, str], _Entry] = {}  # recorded by this process, oldest first
        self._fingerprints: dict[str, str] = {}  # namespace -> current candidates' fingerprint, as tables said

    def get(self, namespace: str, fingerprint: str, key_text: str) -> object:
        with _lock:
            self._fingerprints[namespace] = fingerprint
            if self._entries is None:
                self._entries = {(e.namespace, e.key_text): e for e in _read(self.path, self.identity)}
                if self._entries:
                    log.info("INT8 W8A8: %d tuned kernel choices loaded from %s", len(self._entries), self.path)
            entry = self._entries.get((namespace, key_text))
        if entry is None:
            return MISS
        if entry.fingerprint != fingerprint:
            log_once(log, logging.INFO, f"INT8 W8A8 tuning cache: the '{namespace}' candidates changed since "
                                        f"{self.path} was written; its choices are tuned again")
            return MISS
        return entry.value

    def put(self, entry: _Entry) -> None:
        with _lock:
            self._fingerprints[entry.namespace] = entry.fingerprint
            name = (entry.namespace, entry.key_text)
            self._own.pop(name, None)
            self._own[name] = entry  # re-added: newest
            merged = {(e.namespace, e.key_text): e for e in _read(self.path, self.identity)
                      if self._fingerprints.get(e.namespace, e.fingerprint) == e.fingerprint}
            for own in self._own:
                merged.pop(own, None)
            merged.update(self._own)
            for oldest in list(merged)[:max(0, len(merged) - MAX_ENTRIES)]:
                del merged[oldest]
                self._own.pop(oldest, None)
            self._entries = merged
            self._save(list(merged.values()))

    def _save(self, entries: list[_Entry]) -> None:
        data = {"format": FORMAT, "identity": self.identity,
                "candidates": {e.namespace: e.fingerprint for e in entries},
                "entries": [[e.namespace, e.key, e.value] for e in entries]}
        try:
            _write_atomic(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            log_once(log, logging.WARNING, f"INT8 W8A8: cannot save tuned kernel choices to {self.path} "
                                           f"({type(exc).__name__}: {exc.strerror or exc}); they are kept for this "
                                           f"process only (set {ENV} to a writable folder, or to 0 to turn this off)")


def _read(path: Path, identity: dict) -> list[_Entry]:
    """The entries of ``path``; none when it is absent, or unusable (logged once)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        _ignored(path, f"it cannot be read ({type(exc).__name__})", foreign=False)
        return []
    try:
        return _parse(json.loads(text), identity)
    except _Unusable as exc:
        _ignored(path, str(exc), exc.foreign)
    except ValueError:  # json.JSONDecodeError: truncated, or not JSON
        _ignored(path, "it is not valid JSON (truncated?)", foreign=False)
    return []


def _ignored(path: Path, reason: str, foreign: bool) -> None:
    log_once(log, logging.INFO if foreign else logging.WARNING,
             f"INT8 W8A8: ignoring the tuning cache {path}: {reason}; kernels are tuned again and the file rewritten")


def _parse(data: object, identity: dict) -> list[_Entry]:
    if not isinstance(data, dict):
        raise _Unusable("its top level is not an object")
    if data.get("format") != FORMAT:
        raise _Unusable(f"format {data.get('format')!r}, this pack reads {FORMAT}", foreign=True)
    theirs = data.get("identity")
    if not isinstance(theirs, dict):
        raise _Unusable("it has no identity")
    if theirs != identity:
        field = next(f for f in sorted(set(theirs) | set(identity)) if theirs.get(f) != identity.get(f))
        raise _Unusable(f"written for {field} {theirs.get(field)!r}, this is {identity.get(field)!r}", foreign=True)
    fingerprints, rows = data.get("candidates"), data.get("entries")
    if not isinstance(fingerprints, dict) or not isinstance(rows, list):
        raise _Unusable("its candidates or entries are missing or of the wrong type")
    entries = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and isinstance(fingerprints.get(row[0]), str)):
            raise _Unusable(f"an entry is malformed: {str(row)[:80]}")
        namespace, key, value = row
        entries.append(_Entry(namespace, _canonical(key), key, value, fingerprints[namespace]))
    return entries


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and move it over ``path`` (a reader never sees half a
    file). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        for wait in _REPLACE_WAITS_S:
            try:
                os.replace(tmp, path)
                return
            except PermissionError:  # Windows: another process is reading or replacing the file
                time.sleep(wait)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------------------- identities
def _store_for(device_index: int) -> _Store | None:
    folder = directory()
    if folder is None:
        return None
    with _lock:
        identity = _identities.get(device_index)
        if identity is None:
            identity = _identities[device_index] = _device_identity(device_index)
        path = folder / file_for(identity)
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = _Store(path, identity)
    return store


def _device_identity(device_index: int) -> dict:
    """What a timing on CUDA device ``device_index`` depends on besides the shape (JSON)."""
    return {"gpu": torch.cuda.get_device_name(device_index), "capability": list(capability(device_index)),
            "sm_count": sm_count(device_index), "torch": torch.__version__, "triton": compat.triton_release(),
            "pack": PACK_VERSION}


# ------------------------------------------------------------------------------------------------------------ JSON
def _jsonable(obj: object) -> object:
    """``obj`` with tuples as lists and torch dtypes as their names; raises TypeError for anything else not JSON."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    raise TypeError(f"tuning cache: {type(obj).__name__} {obj!r} has no JSON form")


def _canonical(obj: object) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
