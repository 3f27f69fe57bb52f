"""``Checkpoint``: an opened safetensors checkpoint with bare (prefix-stripped) keys, read lazily."""

from __future__ import annotations

import mmap
from collections import defaultdict
from pathlib import Path
from typing import BinaryIO

import torch

from .detect import detect_format
from .errors import CheckpointError
from .fileops import open_regular
from .keys import QUANT_SUFFIXES, diffusion_model_prefix, key_layout, layer_of, strip_prefix
from .quant_config import check_quant_config, loads_json
from .safetensors_io import TensorInfo, read_header
from .tensor_data import map_file, mapped_tensor, read_tensor

__all__ = ["Checkpoint", "open_checkpoint"]

# comfy_quant entries are a few dozen bytes; anything larger is not one (and is not worth reading to find out).
_MAX_COMFY_QUANT_BYTES = 4096


class Checkpoint:
    """A safetensors checkpoint: header checked at open, tensors read one at a time on request.

    Attributes: ``path``; ``format`` (see :data:`.detect.FORMATS`); ``metadata`` (the header's ``__metadata__``);
    ``prefix`` (stripped from every key, e.g. ``model.diffusion_model.``); ``layout`` (``comfy`` or
    ``diffusers``); ``quant_configs`` (layer -> comfy_quant dict). Keys everywhere are bare (prefix stripped).
    Never unpickles; every problem with the file raises :class:`CheckpointError`. ``mapped``: :meth:`tensor` returns
    views of a private mapping of the file instead of fresh copies (the loader's way; see tensor_data).
    """

    def __init__(self, path: str | Path, mapped: bool = False) -> None:
        self._file: BinaryIO | None = None  # first, so close() works even when the header check raises
        self._mapping: mmap.mmap | None = None
        self.mapped = mapped
        self.path = str(path)
        header = read_header(path)
        self.metadata: dict[str, str] = header.metadata
        self.file_size = header.file_size
        self.prefix = diffusion_model_prefix(header.tensors)
        key_map = strip_prefix(header.tensors)
        self._infos: dict[str, TensorInfo] = {bare: header.tensors[orig] for orig, bare in key_map.items()}
        self.outside_keys = len(header.tensors) - len(key_map)  # VAE / text encoder keys of an all-in-one file
        self.layout = key_layout(self._infos)
        self.quant_configs = self._read_quant_configs()
        self.format = detect_format(self._infos, self.quant_configs)

    # -- keys and header info ---------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Bare keys in file order."""
        return list(self._infos)

    def __contains__(self, key: str) -> bool:
        return key in self._infos

    def info(self, key: str) -> TensorInfo:
        """dtype / shape / byte range of ``key`` without reading it."""
        try:
            return self._infos[key]
        except KeyError:
            raise KeyError(f"'{self.path}' has no tensor '{key}'.") from None

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def layers(self) -> dict[str, dict[str, str]]:
        """layer -> {suffix: bare key} for every key ending in a per-layer suffix (weight, scales, bias...)."""
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for key in self._infos:
            layer, suffix = layer_of(key)
            if suffix in QUANT_SUFFIXES and layer:
                out[layer][suffix] = key
        return dict(out)

    # -- data -------------------------------------------------------------------------------------------------
    def tensor(self, key: str) -> torch.Tensor:
        """One tensor on the CPU: a fresh copy (nothing else of the file stays resident), or for a ``mapped``
        checkpoint a view of the mapping."""
        info = self.info(key)
        if self._file is None:
            try:
                self._file = open_regular(self.path)  # kept open across calls, closed by close()
            except OSError as exc:
                raise CheckpointError(self.path, f"cannot be opened ({exc.strerror}).", "Check the path.") from exc
        if not self.mapped:
            return read_tensor(self._file, info, self.path)
        if self._mapping is None:
            self._mapping = map_file(self._file, self.path)
        return mapped_tensor(self._mapping, info, self.path)

    def close(self) -> None:
        # The mapping is dropped, not closed: tensors viewing it keep it alive and it is unmapped with the last.
        self._mapping = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint('{self.path}', format={self.format}, tensors={len(self._infos)})"

    # -- quantization configs -------------------------------------------------------------------------------------
    def _read_quant_configs(self) -> dict[str, dict]:
        configs: dict[str, dict] = {}
        raw_meta = self.metadata.get("_quantization_metadata")
        if raw_meta is not None:
            configs.update(self._configs_from_header(raw_meta))
        for key, info in self._infos.items():
            layer, suffix = layer_of(key)
            if suffix != "comfy_quant":
                continue
            if info.dtype != torch.uint8 or len(info.shape) != 1 or info.nbytes > _MAX_COMFY_QUANT_BYTES:
                raise CheckpointError(self.path, f"layer '{layer}': comfy_quant must be a small uint8 vector of JSON, "
                                      f"got {info.dtype}{list(info.shape)}.", "The file is corrupt: re-download it.")
            raw = bytes(self.tensor(key).tolist())
            conf = loads_json(self.path, f"layer '{layer}': its comfy_quant entry", raw)
            configs[layer] = check_quant_config(self.path, layer, conf)
        return configs

    def _configs_from_header(self, raw: str) -> dict[str, dict]:
        meta = loads_json(self.path, "its _quantization_metadata header entry", raw)
        layers = meta.get("layers") if isinstance(meta, dict) else None
        if not isinstance(layers, dict):
            raise CheckpointError(self.path, "its _quantization_metadata header entry has no 'layers' object.",
                                  "The file is corrupt: re-download it.")
        out = {}
        for name, conf in layers.items():
            conf = check_quant_config(self.path, name, conf, "_quantization_metadata config")
            if self.prefix and not name.startswith(self.prefix):
                continue  # outside the diffusion model (text encoder, VAE of an all-in-one file)
            out[name[len(self.prefix):]] = conf
        return out


def open_checkpoint(path: str | Path, mapped: bool = False) -> Checkpoint:
    """Open ``path`` (safetensors only; ``mapped``: see :class:`Checkpoint`). Raises :class:`CheckpointError` naming
    the file and the fix for a missing file, a pickled ``.ckpt``/``.pt``/``.bin``/``.pth``, a non-safetensors file
    or a truncated/corrupt header."""
    return Checkpoint(path, mapped)
