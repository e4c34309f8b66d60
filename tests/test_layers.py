"""The package's structure (docs/contributing.md): each sub-package imports only from the layers
below it, and no module imports another that imports it back, directly or round a circle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "dbm_ltr"

#: Bottom to top; a package may import from any lower layer and from itself.
LAYERS = [
    {"_lazy"},
    {"__init__", "errors", "registry"},
    {"serialization"},
    {"nn", "metrics"},
    {"figures", "losses", "models", "data"},
    {"methods"},
    {"engine"},
    {"analysis"},
    {"experiments"},
    {"cli"},
]
LAYER = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The dbm_ltr modules ``path`` imports (``import dbm_ltr.x`` and ``from ... import``,
    relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(SRC).parts[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):  # import dbm_ltr.engine.trainer
            for alias in node.names:
                if alias.name == "dbm_ltr" or alias.name.startswith("dbm_ltr."):
                    found.add(".".join(alias.name.split(".")[1:]) or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("dbm_ltr"):
                target = node.module.split(".")[1:]
            else:
                continue
            if not node.module and node.level:  # from . import name: name may be a module
                for alias in node.names:
                    candidate = target + [alias.name]
                    if (SRC.joinpath(*candidate).with_suffix(".py")).is_file() or SRC.joinpath(*candidate).is_dir():
                        found.add(".".join(candidate))
                    else:
                        found.add(".".join(target) or "__init__")
                continue
            found.add(".".join(target) or "__init__")
    return found


def test_every_package_imports_only_from_the_layers_below():
    upward = []
    for path in SRC.rglob("*.py"):
        source = module_name(path).split(".")[0]
        for target in imports(path, top_level_only=False):
            head = target.split(".")[0]
            if head != source and LAYER[head] >= LAYER[source]:
                upward.append(f"{module_name(path)} -> {target}")
    assert not upward, upward
    assert set(LAYER) >= {
        p.stem if p.is_file() else p.name
        for p in SRC.iterdir()
        if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file())
    }


def test_no_circle_of_module_imports():
    graph = {module_name(p): set() for p in SRC.rglob("*.py")}
    for path in SRC.rglob("*.py"):
        for target in imports(path, top_level_only=True):
            while target not in graph and "." in target:  # a name imported from a module
                target = target.rsplit(".", 1)[0]
            if target in graph and target != module_name(path):
                graph[module_name(path)].add(target)
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
