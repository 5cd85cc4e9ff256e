"""The module graphs of pipeline/ and training/: no import circle (function-level imports included),
pipeline/ imports nothing of training/, nothing outside the store layer imports a private name of it,
and no package of training/ imports a private name of another."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of every import statement of ``path`` inside ``modules``."""
    found = []
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if base in modules:
                found.append((base, [n for n in names if f"{base}.{n}" not in modules], node.lineno))
            found += [(m, [], node.lineno) for m in submodules]
    return found


def _graph(package: str) -> dict[str, list[tuple[str, list[str], int]]]:
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


def _cycles(graph: dict[str, list]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    edges = {m: {target for target, _, _ in imports} for m, imports in graph.items()}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_pipeline_has_no_import_circle():
    graph = _graph("pipeline")
    assert len(graph) > 20  # the walk found the package
    assert _cycles(graph) == []


def test_training_has_no_import_circle():
    graph = _graph("training")
    assert len(graph) > 40  # the walk found the package and its stages (data, run, models, experiments)
    # function-level imports count: the CLI imports the training loop only when it trains
    assert "training.run.loop" in {target for target, _, _ in graph["training.cli"]}
    assert _cycles(graph) == []  # issue #22 item 6: optim <-> protocol was one


def test_pipeline_imports_nothing_of_training():
    found = [
        (str(path.relative_to(ROOT)), node.lineno)
        for path in sorted((ROOT / "pipeline").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "training")
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "training" for a in node.names))
    ]
    assert found == []


def test_no_package_of_training_imports_a_private_name_of_another():
    graph = _graph("training")

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    private = [(m, target, name) for m, imports in graph.items() for target, names, _ in imports for name in names
               if name.startswith("_") and package(target) != package(m)]  # fmt: skip
    assert private == []


def test_a_circle_is_found_when_there_is_one():
    graph = {"a": [("b", [], 1)], "b": [("c", [], 1)], "c": [("a", [], 1)], "d": [("a", [], 1)]}
    assert _cycles(graph) == [["a", "b", "c"]]


def _store_imports(top: str):
    """``(file, module, name)`` of every import from the store package in files under ``top`` outside it."""
    for path in sorted((ROOT / top).rglob("*.py")):
        if path.is_relative_to(ROOT / "pipeline" / "store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline.store"):
                yield from ((path.relative_to(ROOT), node.module, alias.name) for alias in node.names)


def test_nothing_outside_the_store_package_imports_a_private_name_of_it():
    found = [(str(f), m, n) for top in ("pipeline", "training", "benchmarks") for f, m, n in _store_imports(top)]
    assert len(found) > 20  # build, batch, cli... import the store layer
    assert [x for x in found if x[2].startswith("_")] == []


def test_training_reads_stores_only_through_the_store_packages_public_names():
    import pipeline.store

    found = list(_store_imports("training"))
    assert found  # training/data/ reads through ArrayReader
    assert {(m, n) for _, m, n in found} <= {("pipeline.store", n) for n in pipeline.store.__all__}
