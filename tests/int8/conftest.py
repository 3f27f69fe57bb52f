"""Shared checks of the int8 kernel tests."""

from collections.abc import Callable, Iterable

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
