import importlib.util
import pathlib

import pytest


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test starts with empty dynamo caches and counters, so counts are this test's own."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _load_tiny_dit():
    # --import-mode=importlib puts no test folder on sys.path: load the helper module by its path.
    path = pathlib.Path(__file__).with_name("tiny_dit.py")
    spec = importlib.util.spec_from_file_location("compile_tests_tiny_dit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TINY = _load_tiny_dit()


@pytest.fixture(scope="session")
def tiny():
    """The tiny DiT helpers (TinyDiT, Owner, Executor, call_through)."""
    return _TINY
