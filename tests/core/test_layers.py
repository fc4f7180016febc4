"""Imports run downward: every module of the package sits in one layer, and none imports above it.

Read from the source with ``ast`` (nothing is imported): module-level and function-level imports,
relative ones resolved. A module may import its own layer and the layers below. Module-level
imports form no cycle. A function-level import of a package module must say why it waits (a comment
on its line or above its block of imports: it defers torch, napari or another heavy import, or it
breaks a cycle with a package's ``__init__``), except in the front ends, which import the engine only when a
command runs or a widget acts (``napari-unet --help`` and opening a dock load no torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "napari_unet"

LAYERS = [  # lowest first: (name, module prefixes)
    ("vocabulary", ["napari_unet", "napari_unet.config", "napari_unet.events", "napari_unet.errors",
                    "napari_unet.metrics"]),
    ("array rules", ["napari_unet.arrays"]),
    ("runtime and files", ["napari_unet.runtime", "napari_unet.files"]),
    ("networks, heads and data", ["napari_unet.models", "napari_unet.heads", "napari_unet.data"]),
    ("engine", ["napari_unet.training", "napari_unet.inference", "napari_unet.diffusion", "napari_unet.pretrained"]),
    ("workflows", ["napari_unet.workflows"]),
    ("front ends", ["napari_unet.cli", "napari_unet.widgets", "napari_unet.__main__"]),
]
FRONT_ENDS = ("napari_unet.cli", "napari_unet.widgets")  # function-level imports need no comment here


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        init = parts[-1] == "__init__"
        found[".".join(parts[:-1] if init else parts)] = (path, init)
    return found


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the longest prefix naming ``module`` (the root matches only itself)."""
    best, found = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix == "napari_unet"
            if (module == prefix or (not exact and module.startswith(prefix + "."))) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer: add its folder to LAYERS"
    return found


def imports(name: str, path: Path, init: bool, known: dict) -> list[tuple[str, int, str]]:
    """(imported package module, line, kind) for each import in the file; kind: 'module',
    'function' or 'typing' (under ``if TYPE_CHECKING``)."""
    found = []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:
            base = name.split(".") if init else name.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        return [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]

    def visit(node, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    if target == "napari_unet" or target.startswith("napari_unet."):
                        while target not in known:
                            target = target.rsplit(".", 1)[0]
                        found.append((target, child.lineno, kind))
            inner = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "function"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test) and kind == "module":
                inner = "typing"
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), "module")
    return found


def graph():
    known = modules()
    return known, {name: imports(name, path, init, known) for name, (path, init) in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    _, edges = graph()
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) line {line} imports {target} ({LAYERS[layer_of(target)][0]})"
              for name, found in edges.items() for target, line, _ in found if layer_of(target) > layer_of(name)]
    assert upward == []


def test_module_level_imports_form_no_cycle():
    _, edges = graph()
    after = {name: {t for t, _, kind in found if kind == "module" and t != name} for name, found in edges.items()}
    cycles, state = [], {}

    def walk(node, stack):  # depth-first search; a grey node met again closes a cycle
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(after[node]):
            if state.get(nxt) == "grey":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "black"

    for name in sorted(after):
        if name not in state:
            walk(name, [])
    assert cycles == []


def said_why(lines: list[str], line: int) -> bool:
    """A comment on the import's line, or on the line above the block of imports it belongs to."""
    if "#" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_function_level_imports_say_why():
    known, edges = graph()
    silent = []
    for name, found in edges.items():
        if name.startswith(FRONT_ENDS):
            continue
        lines = known[name][0].read_text(encoding="utf-8").splitlines()
        for target, line, kind in found:
            if kind != "function":
                continue
            if not said_why(lines, line):
                silent.append(f"{name} line {line}: {lines[line - 1].strip()}")
    assert silent == []


def test_the_layers_hold_what_the_docs_say():
    """The table above and docs/architecture.md's folder table name the same folders."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    missing = sorted(f for f in folders if f"`{f}/`" not in doc)
    assert missing == []
