"""The package's shape: no module imports one that imports it back, and the runtime needs nothing beside it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("inference", "training", "scripts", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, at the top or inside functions, as modules (not packages' names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_imports_inside_functions():
    graph = import_graph()
    assert "inference.pipelines" in graph["inference.openvino_export"]
    assert "inference.segfm.segment" in graph["inference.pipelines"]  # `from .segfm import segment`


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("outside", ["training", "scripts", "tests"])
def test_the_container_code_needs_nothing_outside_inference(outside):
    graph = import_graph()
    users = sorted(m for m, targets in graph.items() if m.startswith("inference")
                   for t in targets if t.startswith(outside))
    assert users == []



PIPELINE_FOLDERS = ("inference.segfm", "inference.nninteractive")


def in_folder(module: str, folder: str) -> bool:
    return module == folder or module.startswith(folder + ".")


def reaching_into_pipelines(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a pipeline folder from anywhere in inference/ but that folder itself and the table (pipelines.py)."""
    return sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith("inference") for t in targets
                  for folder in PIPELINE_FOLDERS
                  if in_folder(t, folder) and not in_folder(m, folder) and m != "inference.pipelines")


def test_only_the_pipeline_table_imports_a_pipeline_folder():
    """Shared modules (model, class_task, fusion, the segmenter, the server, ...) know no pipeline: `pipelines.py`
    is the one place that names them, and a pipeline folder never reaches into another one."""
    assert reaching_into_pipelines(import_graph()) == []


def test_the_pipeline_rule_sees_a_shared_module_or_a_sibling_pipeline_reaching_in():
    graph = {"inference.model": {"inference.segfm.settings"}, "inference.pipelines": {"inference.segfm.segment"},
             "inference.nninteractive.view": {"inference.segfm.inputs"}, "training.train": {"inference.segfm.inputs"}}
    assert reaching_into_pipelines(graph) == ["inference.model -> inference.segfm.settings",
                                              "inference.nninteractive.view -> inference.segfm.inputs"]
