"""Type-check a layer's quantization config (``comfy_quant`` entry or ``_quantization_metadata`` layer) before use.

A config comes from the file, so every field the readers look at is checked here once: ``format`` a string,
``params`` an object, ``convrot`` a bool, ``convrot_groupsize`` a positive int (JSON ``1e400`` is a float
infinity, ``"256"`` a string: both refused). Containers may nest only :data:`MAX_DEPTH` deep, so neither a
``repr`` in an error message nor a reader ever recurses through a hostile payload. Anything else becomes a
:class:`CheckpointError` naming the file, the layer and the fix.
"""

from __future__ import annotations

import json
import math

from .errors import CheckpointError

__all__ = ["MAX_DEPTH", "check_quant_config", "loads_json"]

# ComfyUI's configs are flat objects with an optional flat "params"; 4 leaves room for tools we do not know.
MAX_DEPTH = 4
_MAX_GROUP = 1 << 20  # far above any rotation block (64/256/1024); bounds the int before any arithmetic
_FIX = "The file is corrupt or was written by a tool we do not know: re-download or re-export it."


def loads_json(path: str, where: str, raw: bytes | str) -> object:
    """``json.loads`` whose every failure (bad UTF-8, syntax, nesting deep enough to exhaust the stack) is a
    :class:`CheckpointError` naming ``where`` (e.g. ``layer 'x': its comfy_quant entry``)."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise CheckpointError(path, f"{where} is not valid UTF-8 JSON ({type(exc).__name__}).", _FIX) from exc


def _depth(value: object) -> int:
    """Nesting depth of a parsed JSON value, without recursion (a hostile value may be thousands deep)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _group_size(path: str, where: str, value: object) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 < value <= _MAX_GROUP:
        shown = value if isinstance(value, int | float | bool | None) else type(value).__name__
        raise CheckpointError(path, f"{where}: convrot_groupsize {shown!r} is not a positive integer block size.", _FIX)
    return value


def check_quant_config(path: str, layer: str, conf: object, source: str = "comfy_quant entry") -> dict:
    """``conf`` checked and normalized (``convrot_groupsize`` an int). Raises :class:`CheckpointError` for a
    config that is not an object, nests too deep, or has a field of the wrong type."""
    where = f"layer '{layer}': its {source}"
    if not isinstance(conf, dict):
        raise CheckpointError(path, f"{where} is a JSON {type(conf).__name__}, not an object.", _FIX)
    if _depth(conf) > MAX_DEPTH:
        raise CheckpointError(path, f"{where} nests deeper than {MAX_DEPTH} levels, which no quantization config does.",
                              _FIX)
    out = dict(conf)
    fmt = out.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise CheckpointError(path, f"{where}: 'format' is a JSON {type(fmt).__name__}, expected a string such as "
                              "\"int8_tensorwise\".", _FIX)
    params = out.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise CheckpointError(path, f"{where}: 'params' is a JSON {type(params).__name__}, expected an object.", _FIX)
    params = dict(params)
    for holder in (out, params):
        if "convrot" in holder:
            flag = holder["convrot"]
            if not isinstance(flag, bool) and flag not in (0, 1):
                raise CheckpointError(path, f"{where}: 'convrot' is {type(flag).__name__}, expected true or false.",
                                      _FIX)
            holder["convrot"] = bool(flag)
        if "convrot_groupsize" in holder:
            holder["convrot_groupsize"] = _group_size(path, where, holder["convrot_groupsize"])
    if "params" in out:
        out["params"] = params
    return out
