"""The pack's version, importable from every layer (the package's ``__init__`` imports ComfyUI's node modules).

Kept equal to ``pyproject.toml``'s ``version`` and the package's ``__version__`` (tests/int8/test_tuning_cache.py
checks): tuned kernel choices on disk are tied to it (launch/tuning_cache.py).
"""

from __future__ import annotations

__all__ = ["PACK_VERSION"]

PACK_VERSION = "0.1.0"
