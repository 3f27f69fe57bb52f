"""The loader's cache of quantized weights (``prepack_int8_weights``): the first load of a 16-bit or fp8 file writes
the state dict it handed to ComfyUI after quantizing, later loads read it instead of the source file.

The cache file is a ComfyUI-native int8 safetensors file (``weight`` int8, ``weight_scale``, ``comfy_quant``, plus
every other tensor exactly as the loader read it from the source, and ``input_smooth`` for ``smooth``), so a hit
goes through the loader's normal pre-quantized path. Its name is a *slot* (the source path and the options that
change the numbers), its ``__metadata__`` holds the full key (the slot plus the source's size, mtime and content
fingerprint and the pack's version): a changed source or pack replaces the slot's file instead of leaving a stale
one behind. Files are written atomically (temp file + rename) and the folder is capped (LRU by mtime, a hit
touches its file). No ComfyUI import here: the folder is passed in by the loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..int8.formats.errors import CheckpointError
from ..int8.formats.safetensors_io import (
    MAX_HEADER_BYTES,
    SafetensorsStreamWriter,
    TensorSpec,
    read_header,
)
from ..int8.formats.tensor_data import map_file, mapped_tensor
from ..int8.formats.writer import META_PREFIX, pack_version

__all__ = ["CACHE_FORMAT_REVISION", "CachedWeights", "CacheKey", "CacheLimits", "CacheRecorder", "make_key", "cache_file",
           "read_cache", "write_cache", "evict", "source_fingerprint", "pack_identity"]

log = logging.getLogger("comfy_int8_w8a8")

# Bump when what a cache file holds or how it is read changes: every older cache file is then rebuilt.
CACHE_FORMAT_REVISION = 1
CACHE_SUFFIX = ".int8cache.safetensors"
_CACHE_META = META_PREFIX + "cache."
_KEY_META = _CACHE_META + "key"
_FACT_META = _CACHE_META + "fact."
_FINGERPRINT_BYTES = 1 << 20
# Kept free beyond the file itself, so a cache never fills the disk a user's outputs go to.
FREE_SPACE_MARGIN = 2 << 30
# A ".partial" this old belongs to no running write (a write takes minutes at most): a crashed process left it.
_STALE_PARTIAL_S = 6 * 3600


@dataclass(frozen=True)
class CacheLimits:
    """How much the cache folder may hold: at most ``max_files`` files and ``max_bytes`` bytes (oldest evicted)."""

    max_files: int = 4
    max_bytes: int = 64 << 30

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CacheLimits:
        """``INT8_W8A8_CACHE_MAX_FILES`` / ``INT8_W8A8_CACHE_MAX_GB`` override the defaults; a bad value raises
        ``ValueError`` naming the variable."""
        env = os.environ if env is None else env
        default = cls()
        try:
            files = int(env.get("INT8_W8A8_CACHE_MAX_FILES", default.max_files))
            gib = float(env.get("INT8_W8A8_CACHE_MAX_GB", default.max_bytes / 2**30))
        except ValueError as exc:
            raise ValueError(f"INT8_W8A8_CACHE_MAX_FILES must be an integer and INT8_W8A8_CACHE_MAX_GB a number "
                             f"({exc}); unset them for the defaults ({default.max_files} files, "
                             f"{default.max_bytes / 2**30:.0f} GiB).") from exc
        if files < 1 or gib <= 0:
            raise ValueError("INT8_W8A8_CACHE_MAX_FILES must be >= 1 and INT8_W8A8_CACHE_MAX_GB > 0; to turn the "
                             "cache off, switch prepack_int8_weights off on the loader node.")
        return cls(files, int(gib * 2**30))


@dataclass(frozen=True)
class CacheKey:
    """What a cache file was built from. ``source``/``options`` name the slot (the file name); the rest says
    whether the slot's file is still current."""

    source: str  # absolute path of the source file
    options: str  # JSON of the options that change the quantized numbers
    size: int
    mtime_ns: int
    fingerprint: str  # sha256 of the source's header and first and last MiB
    pack: str  # pack version + cache format revision

    def slot(self) -> str:
        return hashlib.sha256(json.dumps([self.source, self.options]).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def mismatch(self, stored: str) -> str | None:
        """Why a cache file whose key is ``stored`` (JSON) cannot serve this key, or None if it can."""
        try:
            other = json.loads(stored)
        except json.JSONDecodeError:
            return "its key is not JSON"
        if not isinstance(other, dict):
            return "its key is not a JSON object"
        if other.get("pack") != self.pack:
            return f"it was written by pack {other.get('pack')!r}, this is {self.pack!r}"
        if other.get("source") != self.source or other.get("options") != self.options:
            return "it was built from another file or with other options"
        if (other.get("size"), other.get("mtime_ns"), other.get("fingerprint")) != (
                self.size, self.mtime_ns, self.fingerprint):
            return "the source file changed since it was built"
        return None


def pack_identity() -> str:
    """The pack's version (from its pyproject.toml, which ComfyUI's git-cloned custom nodes have; else the installed
    distribution's) and :data:`CACHE_FORMAT_REVISION`."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    version = None
    if pyproject.is_file():
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
        version = match.group(1) if match else None
    return f"{version or pack_version()}+cache{CACHE_FORMAT_REVISION}"


def source_fingerprint(path: str | Path) -> str:
    """sha256 of the safetensors header and the first and last MiB of data: catches a file replaced in place with
    the same size and mtime (a copy with ``cp -p``) without reading gigabytes. Raises ``OSError``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        header_len = min(int.from_bytes(head, "little"), MAX_HEADER_BYTES) if len(head) == 8 else 0
        f.seek(0)
        h.update(f.read(min(size, 8 + header_len + _FINGERPRINT_BYTES)))  # header + first MiB of tensor data
        f.seek(max(0, size - _FINGERPRINT_BYTES))
        h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()


def make_key(source: str | Path, options: dict[str, object]) -> CacheKey:
    """The key of ``source`` loaded with ``options`` (the values that change the quantized numbers)."""
    path = os.path.abspath(source)
    st = os.stat(path)
    return CacheKey(path, json.dumps(options, sort_keys=True), st.st_size, st.st_mtime_ns, source_fingerprint(path),
                    pack_identity())


def cache_file(folder: str | Path, key: CacheKey) -> Path:
    """``<folder>/<source stem>.<slot>.int8cache.safetensors`` (the stem only helps a person browsing the folder)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(key.source).stem)[:80]
    return Path(folder) / f"{stem}.{key.slot()}{CACHE_SUFFIX}"


@dataclass
class CachedWeights:
    """A hit: the state dict as the loader handed it to ComfyUI, the source's metadata, and the facts the writer
    recorded about that load (``facts``, e.g. the model dtype ComfyUI chose)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]
    facts: dict[str, str]


def read_cache(path: Path, key: CacheKey) -> CachedWeights | None:
    """The cached weights for ``key``, or None on a miss. A file that is there but cannot serve (corrupt,
    truncated, foreign, stale) is logged in one line and left for :func:`write_cache` to replace.

    A hit's tensors view a private mapping of the file, as the loader's do of a checkpoint: nothing is read before a
    layer touches it. A writer never changes a cache file in place (it renames a new one over it), so the mapping
    keeps the bytes it was opened with; on Windows a mapped file cannot be replaced or evicted, which costs one
    logged line there, not the load."""
    if not path.exists():
        return None
    try:
        header = read_header(path)
        stored = header.metadata.get(_KEY_META)
        reason = "it has no cache key (not written by this pack)" if stored is None else key.mismatch(stored)
        if reason is None:
            with open(path, "rb") as f:
                mapping = map_file(f, str(path))
            sd = {name: mapped_tensor(mapping, info, str(path)) for name, info in header.tensors.items()}
    except (CheckpointError, OSError) as exc:
        reason = f"it cannot be read ({exc})"
    if reason is not None:
        log.warning("INT8 W8A8: ignoring the weight cache '%s': %s; it will be rebuilt.", path, reason)
        return None
    meta = {k: v for k, v in header.metadata.items() if not k.startswith(_CACHE_META)}
    facts = {k[len(_FACT_META):]: v for k, v in header.metadata.items() if k.startswith(_FACT_META)}
    try:
        os.utime(path)  # the LRU clock: a hit makes this file the newest
    except OSError as exc:  # a read-only cache still serves; it only ages
        log.info("INT8 W8A8: could not touch the weight cache '%s' (%s).", path, exc.strerror)
    return CachedWeights(sd, meta, facts)


class CacheRecorder:
    """Follows one load: starts from the state dict handed to ComfyUI and swaps in each layer's quantized tensors,
    so after the load it *is* the quantized state dict, while the 16-bit weights it replaced are no longer held.

    A layer whose weight ComfyUI renamed or converted before our ops saw it (the tensor is not the one in the state
    dict) makes the recording incomplete: such a load is not cached.
    """

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self.state_dict: dict[str, torch.Tensor] = dict(sd)
        self.quantized = 0
        self.unmatched: list[str] = []

    def record(self, layer: str, weight: torch.Tensor, tensors: dict[str, torch.Tensor]) -> None:
        if self.state_dict.get(layer + ".weight") is not weight:
            self.unmatched.append(layer)
            return
        self.state_dict.update({f"{layer}.{k}": v.detach() for k, v in tensors.items()})
        self.quantized += 1


def evict(folder: Path, incoming: int, replacing: Path | None, limits: CacheLimits) -> None:
    """Delete the least recently used cache files until one more of ``incoming`` bytes fits ``limits`` (the file at
    ``replacing`` is about to be overwritten, so it does not count). Only files named ``*.int8cache.safetensors``
    are ever deleted, and ``.partial`` files a crashed write left behind."""
    now = time.time()
    entries = []
    for p in folder.iterdir():
        try:
            st = p.stat()
        except FileNotFoundError:  # removed by another ComfyUI sharing the folder
            continue
        if p.name.startswith(".") and p.name.endswith(".partial") and CACHE_SUFFIX in p.name:
            if now - st.st_mtime > _STALE_PARTIAL_S:
                _unlink(p, "a leftover partial write")
        elif p.name.endswith(CACHE_SUFFIX) and p != replacing:
            entries.append((st.st_mtime, st.st_size, p))
    entries.sort()
    total, count = sum(e[1] for e in entries) + incoming, len(entries) + 1
    while entries and (total > limits.max_bytes or count > limits.max_files):
        _, size, p = entries.pop(0)
        _unlink(p, "least recently used")
        total, count = total - size, count - 1


def _unlink(path: Path, why: str) -> None:
    try:
        path.unlink()
        log.info("INT8 W8A8: removed weight cache '%s' (%s).", path.name, why)
    except FileNotFoundError:
        pass  # another process evicted it first: the goal is reached
    except OSError as exc:
        log.warning("INT8 W8A8: could not remove weight cache '%s' (%s).", path, exc.strerror)


def write_cache(path: Path, key: CacheKey, sd: dict[str, torch.Tensor], source_metadata: dict[str, str],
                limits: CacheLimits, on_bytes: Callable[[int, int], None] | None = None,
                facts: dict[str, str] | None = None) -> bool:
    """Write ``sd`` as the cache file ``path`` for ``key``; True when written. Never raises for a problem of the
    cache folder (full disk, no permission): it logs one line and returns False, leaving no partial file.
    ``on_bytes(done, total)`` reports progress after each tensor; ``facts`` come back in :class:`CachedWeights`."""
    specs = [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in sd.items()]
    total = sum(s.nbytes for s in specs)
    meta = {k: v for k, v in source_metadata.items() if not k.startswith(_CACHE_META)}
    meta.update({_KEY_META: key.to_json(), _CACHE_META + "source": Path(key.source).name})
    meta.update({_FACT_META + k: v for k, v in (facts or {}).items()})
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if total > limits.max_bytes:
            log.warning("INT8 W8A8: not caching '%s': %.2f GiB is more than the cache limit of %.2f GiB "
                        "(INT8_W8A8_CACHE_MAX_GB).", key.source, total / 2**30, limits.max_bytes / 2**30)
            return False
        evict(path.parent, total, path, limits)
        free = shutil.disk_usage(path.parent).free  # a stale file it replaces is only freed after the rename
        if free < total + FREE_SPACE_MARGIN:
            log.warning("INT8 W8A8: not caching '%s': %.2f GiB needed plus %.0f GiB kept free, %.2f GiB free in "
                        "'%s' (set INT8_W8A8_CACHE_DIR to a larger disk).", key.source, total / 2**30,
                        FREE_SPACE_MARGIN / 2**30, free / 2**30, path.parent)
            return False
        with SafetensorsStreamWriter(path, specs, meta, force=True) as writer:
            done = 0
            for name, t in sd.items():
                writer.write(name, t)
                done += t.numel() * t.element_size()
                if on_bytes is not None:
                    on_bytes(done, total)
            writer.commit()
    except (CheckpointError, OSError) as exc:  # the writer removed its temp file before raising
        log.warning("INT8 W8A8: could not write the weight cache '%s' (%s); the model loaded normally.", path, exc)
        return False
    log.info("INT8 W8A8: wrote the weight cache '%s' (%.2f GiB in %.1f s).", path, total / 2**30,
             time.perf_counter() - start)
    return True
