"""The package's imports run one way: nodes -> engine -> backends -> launch runtime -> kernels -> core.

The graph is built from the source (every ``import`` statement, function-local ones included), so a cycle or an
upward import fails here before anyone has to find it by reading. Layers, top to bottom, are listed in ``LAYERS``;
a module may import modules of lower layers, and modules of its own layer as long as no cycle forms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfy_int8_w8a8"

# (layer name, module-path prefixes) from the top down; the first matching prefix wins, so list specific first.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("face", ("__init__",)),
    ("tools", ("cli", "bench")),
    ("nodes", ("nodes",)),
    ("compile", ("compile",)),
    ("engine", ("int8.__init__", "int8.layer", "int8.linear", "int8.backends.registry", "int8.quantize_model",
                "int8.fidelity", "int8.load_int8", "int8.formats", "models")),
    ("backends", ("int8.backends",)),
    ("launch", ("int8.launch",)),
    ("kernels", ("int8.kernels",)),
    ("core", ("int8.config", "int8.version", "int8.quantize", "int8.hadamard", "int8.smooth", "int8.log_once",
              "int8.attention_reference",
              "int8.weights", "int8.compat", "presets")),
]
# Modules the engine and everything below it must never import: ComfyUI's own.
HOST_MODULES = ("comfy", "comfy_extras", "folder_paths", "nodes", "server", "execution")


def _module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package (relative dotted name, ``int8.layer``; packages as ``int8.__init__``)."""
    skip = {"tests", "docs", "example_workflows", ".venv", ".venv-integration", "build", "dist"}
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if rel[0] in skip or rel[0].startswith("."):
            continue
        found[_module_name(path, root)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement in ``module`` reaches (a ``from pkg import name`` reaches
    ``pkg.name`` when that is a module, else ``pkg``'s ``__init__``)."""
    targets = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        bases = [n[len(PACKAGE) + 1:] for n in names if n.startswith(PACKAGE + ".")]
        return [b for b in bases if b in modules or b + ".__init__" in modules]
    if node.level:
        package = module.split(".")
        package = package[:-1] if package[-1] != "__init__" else package[:-1]
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base_name = ".".join(base + ([node.module] if node.module else []))
    elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
        base_name = node.module[len(PACKAGE) + 1:]
    else:
        return []
    for alias in node.names:
        candidate = f"{base_name}.{alias.name}" if base_name else alias.name
        if candidate in modules:
            targets.append(candidate)
        elif candidate + ".__init__" in modules:
            targets.append(candidate + ".__init__")
        elif base_name in modules:
            targets.append(base_name)
        elif (base_name + ".__init__" if base_name else "__init__") in modules:
            targets.append(base_name + ".__init__" if base_name else "__init__")
    return targets


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> package modules it imports, module -> top-level outside modules it imports)."""
    modules = source_modules(root)
    inner: dict[str, set[str]] = {m: set() for m in modules}
    outer: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                reached = _resolve(module, node, modules)
                inner[module].update(t for t in reached if t != module)
                if isinstance(node, ast.Import):
                    outer[module].update(a.name.split(".")[0] for a in node.names)
                elif node.level == 0 and node.module:
                    outer[module].add(node.module.split(".")[0])
    return inner, outer


def layer_of(module: str) -> int:
    """0 for the top layer, counting down; raises for a module no layer claims (add it to ``LAYERS``)."""
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return rank
    raise AssertionError(f"module '{module}' belongs to no layer in tests/test_import_graph.py LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                  for m, targets in graph.items() for t in targets if layer_of(t) < layer_of(m))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_layer():
    for module in source_modules():
        layer_of(module)


def test_no_import_cycles():
    inner, _ = import_graph()
    assert cycles(inner) == []


def test_imports_run_one_way():
    inner, _ = import_graph()
    assert upward_imports(inner) == []


def test_engine_and_below_know_nothing_of_comfyui():
    _, outer = import_graph()
    engine = next(i for i, (name, _) in enumerate(LAYERS) if name == "engine")
    offenders = sorted(f"{m} imports {o}" for m, names in outer.items() if layer_of(m) >= engine
                       for o in names if o in HOST_MODULES)
    assert offenders == []


@pytest.mark.parametrize("source,expected", [
    ({"int8/kernels/a.py": "from ..launch import b\n", "int8/launch/b.py": "x = 1\n"}, "upward"),
    ({"int8/launch/a.py": "from . import b\n", "int8/launch/b.py": "def f():\n    from . import a\n"}, "cycle"),
    ({"int8/launch/a.py": "from ..kernels import b\n", "int8/kernels/b.py": "x = 1\n"}, "clean"),
])
def test_the_checks_catch_what_they_claim(tmp_path, source, expected):
    for rel, text in source.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for parent in path.relative_to(tmp_path).parents:
            (tmp_path / parent / "__init__.py").touch()
    inner, _ = import_graph(tmp_path)
    inner = {m: t for m, t in inner.items() if not m.endswith("__init__")}
    found = "upward" if upward_imports(inner) else "cycle" if cycles(inner) else "clean"
    assert found == expected
