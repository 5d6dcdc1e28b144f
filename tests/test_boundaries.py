"""Which module may import what: the report reads results, not layers; sweeps and studies build run
specs, not command lines; no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "posenc"


def modules(*under: str) -> list[Path]:
    return sorted(p for u in under for p in ([SRC / u] if u.endswith(".py") else (SRC / u).rglob("*.py")))


def imported(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of each import in ``path``; name None for ``import module``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, a.name) for a in node.names]
    return found


def test_the_report_imports_no_layers_attention_or_encodings():
    banned = ("posenc.attention", "posenc.layer", "posenc.encodings")
    bad = [
        f"{p.name}: {m}"
        for p in modules("report")
        for m, name in imported(p)
        if any(m == b or m.startswith(b + ".") or f"{m}.{name}" == b for b in banned)
    ]
    assert bad == []


def builds_argv(path: Path) -> list[str]:
    """Calls of ``parse_args``, uses of ``sys.argv``, and lists of ``--flag`` strings."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("parse_args", "argv"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.List) and any(
            isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.startswith("--") for e in node.elts
        ):
            found.append(f"{path.name}:{node.lineno} a list of flags")
    return found


def test_jobs_and_studies_build_no_command_line():
    assert [line for p in modules("jobs.py", "studies") for line in builds_argv(p)] == []


def test_the_scan_finds_a_command_line(tmp_path):
    (tmp_path / "x.py").write_text("import sys\nargv = ['--resume', *sys.argv]\nparser.parse_args(argv)\n")
    assert len(builds_argv(tmp_path / "x.py")) == 3


def test_no_module_imports_a_private_name_of_another():
    bad = [
        f"{p.relative_to(SRC)}: {m} {name}"
        for p in SRC.rglob("*.py")
        for m, name in imported(p)
        if m.startswith("posenc")
        and (any(part.startswith("_") and part != "__init__" for part in m.split(".")) or (name or "").startswith("_"))
        and name != "__version__"
    ]
    assert bad == []
