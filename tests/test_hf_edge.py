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


STRUCTURED = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "embedding", "head", "layers"}


def flat_config_calls(path: Path) -> list[str]:
    """Each ``GPTConfig(...)`` call of ``path`` that passes a keyword other than the sizes and the
    structure (flat sugar fields), or unpacks a mapping other than a ``sizes`` one, as ``line: keyword``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "GPTConfig":
            for k in node.keywords:
                if k.arg is None and ast.unparse(k.value).split(".")[-1] != "sizes":
                    out.append(f"{node.lineno}: **{ast.unparse(k.value)}")
                elif k.arg is not None and k.arg not in STRUCTURED:
                    out.append(f"{node.lineno}: {k.arg}")
    return out


def test_hf_importers_build_structured_configs() -> None:
    assert {p.name: flat_config_calls(p) for p in sorted(HF.glob("*.py")) if flat_config_calls(p)} == {}


def imported_modules(path: Path) -> set[str]:
    """The modules ``path`` imports, and ``module.name`` for each name it imports from one."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_hf_does_not_import_the_study_variants() -> None:
    found = {p.name: sorted(m for m in imported_modules(p) if "variant" in m) for p in sorted(HF.glob("*.py"))}
    assert {name: modules for name, modules in found.items() if modules} == {}


def test_flat_config_calls_finds_them(tmp_path: Path) -> None:  # the negative control of the check above
    module = tmp_path / "m.py"
    module.write_text("GPTConfig(n_layer=2, pe='rope', **fields)\nGPTConfig(**parts.sizes, layers=(x,))\n")
    assert flat_config_calls(module) == ["1: pe", "1: **fields"]
