"""The shape of the source tree: no module of src/ over 500 lines, no function over 80 lines, and no
import circle between posenc's modules (imports inside functions included; importing
``posenc.a.b`` runs ``posenc/a/__init__.py`` first, so a subpackage's ``__init__`` is a module here;
a module's own ancestor packages are not counted: a package's ``__init__`` importing its submodules is
no circle; the top-level ``posenc/__init__.py``, the public facade over everything, is left out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "posenc"
FILES = sorted(SRC.rglob("*.py"))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in FILES}


def imported(path: Path) -> set[str]:
    """The posenc modules a file imports (the packages on the way included), anywhere in it."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES}
    me = module_name(path).split(".")
    ancestors = {".".join(me[:i]) for i in range(1, len(me) + 1)}  # a package's own modules run inside its import
    return out - ancestors


def test_every_module_is_at_most_500_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in FILES if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def test_every_function_is_at_most_80_lines() -> None:
    long = {}
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}:{node.name}"] = n
    assert not long, long


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle() -> None:
    graph = {name: imported(path) for name, path in MODULES.items() if name != "posenc"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize(
    "graph, cyclic",
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_cycle_finder_finds_cycles(graph: dict, cyclic: bool) -> None:  # its negative control
    assert (find_cycle(graph) is not None) == cyclic


def private_imports(path: Path) -> list[str]:
    """The underscore names a file imports from posenc's modules (``from posenc.x import _name``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "posenc"):
            names += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
    return names


def test_no_attention_module_imports_a_private_name_of_another() -> None:
    """The attention modules share their helpers by public names (attention/scores.py, mask.py)."""
    found = {str(p.relative_to(SRC)): n for p in sorted((SRC / "attention").glob("*.py")) if (n := private_imports(p))}
    assert not found, found


def test_the_private_import_finder_finds_them(tmp_path: Path) -> None:  # its negative control
    source = tmp_path / "m.py"
    source.write_text(
        "from __future__ import annotations\nfrom torch.utils._triton import has_triton\n"
        "from posenc.attention.blockwise import _tile, query_block\n"
    )
    assert private_imports(source) == ["posenc.attention.blockwise._tile"]
