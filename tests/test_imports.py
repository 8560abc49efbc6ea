"""The package's import graph: no cycles, and layers that point one way, top-down:

    train_teacher.py, train_student.py
        ->  helper/ (the command-line programs; helper/run/, helper/teachers/)
        ->  distillers/  ->  models/, dataset/  ->  helper/core/

helper/core/ holds the leaves every layer may import (``LEAVES``); they import nothing of the
package but each other, so no arrow runs up and none closes a cycle. The graph is read
from the source with ``ast`` (every import, also those inside functions), nothing is executed.

Edges: ``import a.b`` and ``from a.b import c`` import ``a.b`` (or ``a.b.c`` when ``c`` is a
module; importing a package means its ``__init__.py``); they also run the ``__init__.py`` of
each enclosing package (``a``) unless the importer itself lives inside it (then it already
ran). ``from . import x`` in a submodule imports ``x``; ``from distillers import f`` imports
``distillers/__init__.py``, also from inside ``distillers/`` (and is a cycle when that
``__init__`` imports the importer).
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "dataset", "distillers", "helper")
ENTRY_SCRIPTS = ("train_teacher", "train_student")

# What models/, dataset/ and distillers/ may import of helper/: helper/core/ (and the package
# __init__ files its import runs, both empty of imports).
LEAVES = {
    "helper": "its __init__.py: only a docstring, run by every import of helper.<module>",
    "helper.core": "the leaves' package: only a docstring",
    "helper.core.errors": "UserError, raised wherever a user's input is wrong",
    "helper.core.files": "reading and writing weight files: models/ loads pretrained weights",
    "helper.core.argtypes": "argparse number types: dataset/augment.py declares its flags",
    "helper.core.option_groups": "options as frozen dataclasses: every layer declares its flags",
    "helper.core.user_code": "importing the user's own files: models/ (--model FILE.py:FUNCTION) "
                             "and distillers/ (--distill FILE.py:CLASS)",
}


def module_files(repo=REPO, packages=PACKAGES, scripts=ENTRY_SCRIPTS):
    """``{module name: path}`` of the package (``pkg`` names ``pkg/__init__.py``)."""
    files = {name: repo / f"{name}.py" for name in scripts}
    for package in packages:
        for path in sorted((repo / package).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _package_of(name, path):
    """The package a module's relative imports start from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _ancestors(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name, path, modules):
    """The package modules that ``name`` (at ``path``) imports, anywhere in its source."""
    targets = set()

    def add(module, implicit_parents=True):
        if module not in modules:
            return
        targets.add(module)
        if implicit_parents:
            inside = set(_ancestors(name)) | ({name} if path.name == "__init__.py" else set())
            targets.update(a for a in _ancestors(module) if a in modules and a not in inside)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path).split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    add(submodule)
                else:
                    add(source)
    targets.discard(name)
    return targets


def import_graph(**where):
    modules = module_files(**where)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle as a list ``[a, b, ..., a]``, or None."""
    state = {}  # absent: unvisited, 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_violations(graph):
    """``importer -> imported`` pairs that point the wrong way."""
    def top(module):
        return module.split(".")[0]

    bad = []
    for name, targets in graph.items():
        for target in sorted(targets):
            if top(target) in ENTRY_SCRIPTS and top(name) in PACKAGES:
                bad.append((name, target))  # nothing of the package imports a script
            elif top(name) in ("models", "dataset") and (
                    top(target) == "distillers"
                    or (top(target) == "helper" and target not in LEAVES)):
                bad.append((name, target))
            elif top(name) == "distillers" and top(target) == "helper" and target not in LEAVES:
                bad.append((name, target))
            elif name in LEAVES and target not in LEAVES:
                bad.append((name, target))
    return bad


# ----------------------------------------------------------------------------------------------

def test_cycle_finder_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_edges_are_resolved_like_python(tmp_path):
    src = {"p/__init__.py": "from .a import f\nfrom . import b\n",
           "p/a.py": "from .b import g\nfrom p import h\n",
           "p/b.py": "def g():\n    import q.c\n",
           "q/__init__.py": "", "q/c.py": "from p.a import f\nfrom q import c as same\n"}
    for rel, text in src.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(repo=tmp_path, packages=("p", "q"), scripts=())
    assert graph == {"p": {"p.a", "p.b"}, "p.a": {"p.b", "p"}, "p.b": {"q.c", "q"},
                     "q": set(), "q.c": {"p.a", "p"}}
    assert find_cycle(graph) == ["p", "p.a", "p"]


def test_layer_rules_catch_upward_imports():
    graph = {"models.resnet": {"helper.core.errors", "helper"}, "dataset.folder": {"helper.run.checkpoint"},
             "distillers.kd": {"helper.run.trainer", "models"}, "helper.run.trainer": {"train_student"},
             "helper.core.errors": {"models"}}
    assert sorted(layer_violations(graph)) == [
        ("dataset.folder", "helper.run.checkpoint"), ("distillers.kd", "helper.run.trainer"),
        ("helper.core.errors", "models"), ("helper.run.trainer", "train_student")]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"models", "models.imagenet", "dataset.dali", "distillers.mgd", "helper.run.checkpoint",
            "train_student"} <= set(graph)
    assert "helper.core.errors" in graph["models.base"]  # the walk sees imports at all
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_point_one_way():
    graph = import_graph()
    assert set(LEAVES) <= set(graph), "a whitelisted leaf no longer exists; update LEAVES"
    bad = layer_violations(graph)
    assert not bad, "imports against the layers: " + "; ".join(f"{a} -> {b}" for a, b in bad)
