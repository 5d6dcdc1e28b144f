"""Hugging Face stays at the edge of posenc: importing posenc does not import ``posenc.hf``, and
the modules of ``posenc.hf`` share their helpers by public names, never by another module's private
(underscore) ones."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

HF = Path(__file__).resolve().parent.parent / "src" / "posenc" / "hf"


def test_importing_posenc_does_not_import_hf() -> None:
    code = "import posenc, sys; assert not any(m.startswith('posenc.hf') for m in sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def private_imports(path: Path) -> list[str]:
    """``module.name`` for every underscore name ``path`` imports from another posenc module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("posenc"):
            out += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return out


def test_hf_modules_import_no_private_names() -> None:
    assert {p.name: private_imports(p) for p in sorted(HF.glob("*.py")) if private_imports(p)} == {}


def test_private_imports_finds_one(tmp_path: Path) -> None:  # the negative control of the check above
    module = tmp_path / "m.py"
    module.write_text("from posenc.hf.llama import _mha_weights, llama_weights\n")
    assert private_imports(module) == ["posenc.hf.llama._mha_weights"]
