import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_tuning_cache(monkeypatch):
    """Kernels are tuned in memory only: a test neither reads nor writes the user's tuning cache
    (tests/int8/test_tuning_cache.py points INT8_W8A8_TUNING_CACHE at a temporary folder)."""
    monkeypatch.setenv("INT8_W8A8_TUNING_CACHE", "off")


def cuda_available() -> bool:
    return torch.cuda.is_available()
