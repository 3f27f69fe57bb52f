"""Shared checks of the int8 kernel tests."""

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


@pytest.fixture
def assert_workspace_kept() -> Callable:
    """``check(workspace, device_index, calls)``: after each ``(label, call)``, the split-K ``workspace`` still holds
    the buffers it held before the first call (reserved ahead; a buffer grown inside a CUDA-graph warm-up would be
    allocated in the graph's pool)."""

    def check(workspace, device_index: int, calls: Iterable[tuple[str, Callable[[], object]]]) -> None:  # noqa: ANN001
        reserved = workspace._bufs[device_index]
        for label, call in calls:
            call()
            now = workspace._bufs[device_index]
            assert now[0] is reserved[0] and now[1] is reserved[1], f"workspace grew at {label}"

    return check


@pytest.fixture
def tuning_folder(tmp_path, monkeypatch) -> Path:
    """The tuning cache on, in a temporary folder (returned), for a stand-in H100 (no GPU needed: the identity is
    fixed); in-memory choices and once-only logs start fresh."""
    from comfy_int8_w8a8.int8 import log_once
    from comfy_int8_w8a8.int8.launch import tuning_cache

    path = tmp_path / "cache"
    monkeypatch.setenv(tuning_cache.ENV, str(path))
    identity = {"gpu": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "sm_count": 132, "torch": "2.8.0",
                "triton": "3.6.0", "pack": "0.1.0"}
    monkeypatch.setattr(tuning_cache, "_device_identity", lambda index: dict(identity))
    tuning_cache.forget()
    log_once.clear_log_once()
    yield path
    tuning_cache.forget()
    tuning_cache.set_directory(None)
