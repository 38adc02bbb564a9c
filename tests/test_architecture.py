"""The house's layers (docs/ARCHITECTURE.md): a module imports only from its layer or below,
the library never imports the CLI, and module-level imports have no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).parents[1] / "nlp_cli"

# Lowest first; a module may import from its own layer (without a cycle) and the ones before.
LAYERS = [
    ["nlp_cli", "nlp_cli.errors", "nlp_cli.registry", "nlp_cli.home"],
    [
        "nlp_cli.artifacts",
        "nlp_cli.clip_model",
        "nlp_cli.prompt",
        "nlp_cli.losses",
        "nlp_cli.noise",
        "nlp_cli.purify",
        "nlp_cli.metrics",
        "nlp_cli.detection",
        "nlp_cli.label_issues",
        "nlp_cli.contact_sheet",
        "nlp_cli.joapr",
        "nlp_cli.schedule",
        "nlp_cli.templates",
        "nlp_cli.tables",
        "nlp_cli.aggregate",
        "nlp_cli.datasets",
    ],
    [
        "nlp_cli.data",
        "nlp_cli.checkpoints",
        "nlp_cli.methods",
        "nlp_cli.train",
        "nlp_cli.embed",
        "nlp_cli.evaluate",
        "nlp_cli.analysis",
    ],
    ["nlp_cli.stages"],
    ["nlp_cli.sweep"],
    ["nlp_cli.cli", "nlp_cli.__main__"],
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(name: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if name == prefix or (prefix != "nlp_cli" and name.startswith(prefix + ".")):
                best = i
    if best is None:
        raise AssertionError(f"{name} is in no layer of docs/ARCHITECTURE.md")
    return best


def _imports(path: Path, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nlp_cli"):
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("nlp_cli")]
    return out


MODULES = sorted(p for p in PKG.rglob("*.py") if "assets" not in p.parts)


def _known(name: str) -> str:
    """The module an imported name refers to (`from nlp_cli import x` → nlp_cli.x)."""
    while name not in NAMES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


NAMES = {_module_name(p) for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_follow_the_layers(path):
    me = _module_name(path)
    for imported in _imports(path):
        target = _known(imported)
        if target == "nlp_cli" and imported != "nlp_cli":
            continue  # `from nlp_cli import x` where x is not a module (e.g. __version__)
        assert _layer(target) <= _layer(me), f"{me} (layer {_layer(me)}) imports {target}"


def test_module_level_imports_have_no_cycle():
    graph = {}
    for path in MODULES:
        me = _module_name(path)
        graph[me] = {_known(i) for i in _imports(path, top_level_only=True)} - {me, "nlp_cli"}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' → '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_datasets_modules_import_each_other_without_a_cycle():
    """Not even through imports inside functions: the split-file types sit below every family."""
    inside = [p for p in MODULES if _module_name(p).split(".")[:2] == ["nlp_cli", "datasets"]]
    graph = {
        _module_name(p): {_known(i) for i in _imports(p)} & {_module_name(q) for q in inside}
        for p in inside
    }
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node] - {node}:
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' → '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_library_imports_without_the_cli():
    code = (
        "import sys\n"
        "import nlp_cli.train, nlp_cli.stages, nlp_cli.sweep, nlp_cli.embed, nlp_cli.analysis\n"
        "bad = [m for m in sys.modules if m == 'nlp_cli.cli' or m.startswith('nlp_cli.cli.')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_library_reads_no_test_hook_from_the_environment():
    for path in MODULES:
        if "cli" in path.relative_to(PKG).parts:
            continue
        assert "NLP_TEST_PAUSE" not in path.read_text(), path
