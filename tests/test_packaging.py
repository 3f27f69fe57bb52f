"""The wheel ships every package of the source tree: pyproject lists packages by hand (the repo root maps onto the
import name), so a new sub-package missing from the list would install without it and fail at import."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "docs", "example_workflows", "build", "dist"}


def _source_packages() -> set[str]:
    found = {"comfy_int8_w8a8"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT).parts
        if rel and rel[0] not in SKIP and not rel[0].startswith("."):
            found.add(".".join(("comfy_int8_w8a8", *rel)))
    return found


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _source_packages() - listed == set()
    assert listed - _source_packages() == set()
