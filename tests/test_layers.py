"""Imports run one way: every module of imgpipe imports only from its own room (subpackage) or from the
layers below it, and no modules import each other in a circle. The graph is read from the code (with
imgpipe.lineage, as test_dvc_deps reads each stage's closure), so a new import is checked the day it is
written. An import hidden inside a function counts: a circle broken that way is still a circle."""

import textwrap
from pathlib import Path

import pytest

from imgpipe import lineage

# Lowest first. A room may import from any room of a lower layer, never from a higher one, and never from
# another room of its own layer (training, evaluation and serving know nothing of one another).
LAYERS = [
    {"shared"},  # errors, paths, files, config, params, device, provenance, lineage
    {"data"},  # sources, image sets, preparing the splits, decoding files
    {"models"},  # networks, the zoo, checkpoints, class scores
    {"training", "evaluation", "serving"},
    {"reporting"},
    {"tracking"},  # MLflow: at the edge, as configuration
    {"search"},  # Optuna: trials that train and are tracked
    {"commands"},  # python -m imgpipe.predict, python -m imgpipe.promote, python -m imgpipe.sweep
]
COMMANDS = {"predict", "promote", "sweep"}
LAYER = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def room(module: str) -> str:
    """imgpipe.data.sources.idx -> data; imgpipe.paths -> shared; imgpipe.predict -> commands."""
    parts = module.split(".")[1:]
    if not parts:
        return "shared"  # the package's __init__
    if lineage.module_file(".".join(module.split(".")[:2])).name == "__init__.py":
        return parts[0]
    return "commands" if parts[0] in COMMANDS else "shared"


def imports(package: Path = None) -> dict[str, set[str]]:
    """module -> the imgpipe modules it imports (the packages a dotted import runs on the way are left out:
    importing imgpipe.data.decode runs imgpipe/data/__init__.py, which is empty)."""
    graph = {}
    for path in sorted(lineage.PACKAGE.rglob("*.py")):
        name = lineage._module_name(path)
        targets = {found for found in lineage.imported_modules(path) if lineage.module_file(found) is not None}
        # keep the deepest names only: `from imgpipe.data import decode` names imgpipe.data and imgpipe.data.decode
        graph[name] = {t for t in targets if not any(other.startswith(t + ".") for other in targets)} - {name}
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in graph.items():
        for target in sorted(targets):
            a, b = room(source), room(target)
            if a != b and LAYER[b] >= LAYER[a]:
                found.append(f"{source} ({a}) imports {target} ({b}): "
                             + ("a peer room of the same layer" if LAYER[b] == LAYER[a] else "a higher layer"))
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_room_in_a_layer():
    rooms = {room(module) for module in imports()}
    assert rooms <= set(LAYER), f"rooms without a layer: {sorted(rooms - set(LAYER))}"


def test_imports_run_downward():
    assert violations(imports()) == []


def test_no_circles():
    assert circles(imports()) == []


def test_an_upward_import_and_a_circle_are_caught(tmp_path, monkeypatch):
    """The checks can fail: a model importing tracking, and two modules importing each other inside functions."""
    package = tmp_path / "imgpipe"
    for folder in ("models", "tracking"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    sources = {
        "__init__.py": "",
        "paths.py": "",
        "models/net.py": "from imgpipe.tracking import store\n",
        "tracking/store.py": "from imgpipe import paths\n",
        "tracking/a.py": "def f():\n    from imgpipe.tracking import b\n",
        "tracking/b.py": "def g():\n    import imgpipe.tracking.a\n",
    }
    for name, text in sources.items():
        (package / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(lineage, "PACKAGE", package)
    graph = imports()
    assert violations(graph) == ["imgpipe.models.net (models) imports imgpipe.tracking.store (tracking): a higher layer"]
    assert circles(graph) == [["imgpipe.tracking.a", "imgpipe.tracking.b"]]


@pytest.mark.parametrize("module", ["imgpipe.serving.loader"])
def test_the_served_code_imports_no_pipeline_machinery(module):
    """What the logged model carries: serving, image decoding, class scores, errors and the device choice
    (device, and config for its list of devices); no tracking, training, progress bars or params."""
    rooms = {room(lineage._module_name(path)) for path in lineage.closure(lineage.module_file(module))}
    assert rooms == {"shared", "data", "models", "serving"}
    shared = {path.name for path in lineage.closure(lineage.module_file(module)) if path.parent == lineage.PACKAGE}
    assert shared == {"__init__.py", "errors.py", "device.py", "config.py"}
