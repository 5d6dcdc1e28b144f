"""Flat fields only at the edge: the library builds its configs from parts.

The flat fields of :mod:`posenc.sugar` and the variant registry :mod:`posenc.variants` are the
public sugar of the command line, the sweep and the studies; no other module builds a GPTConfig
from flat fields, and the model's own modules (config parts, attention, encodings, Hugging Face
import and export) never read the variant registry.
"""

import ast
from pathlib import Path

import pytest

from posenc.sugar import DEFAULTS

SRC = Path(__file__).resolve().parents[1] / "src" / "posenc"

#: modules that may pass flat fields to GPTConfig: the public edge that translates them
FLAT_EDGE = {
    "cli.py",  # the command line's flags
    "train/args.py",  # the train command's flags
    "config.py",  # GPTConfig's own translation of its sugar
    "sugar.py",  # the translation
    "variants.py",  # the variants are flat fields by name (GPTConfig(pe=name))
    "train/run.py",  # build_spec: a run from the train flags' or a sweep's GPTConfig fields, sugar included
    "train/config.py",  # model_config(preset, **fields): from_preset with any GPTConfig fields
}
#: modules that may import posenc.variants: the edge above, the package's re-export of VARIANTS,
#: and the sweep, the studies and the report, which run and label the variants by name
VARIANTS_USERS = FLAT_EDGE | {"__init__.py", "sweep.py", "jobs.py", "studies/", "report/"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(SRC).as_posix(), ast.parse(p.read_text())) for p in sorted(SRC.rglob("*.py"))]


def _allowed(name: str, allow: set[str]) -> bool:
    return any(name == a or (a.endswith("/") and name.startswith(a)) for a in allow)


def flat_calls(tree: ast.Module) -> list[str]:
    """``GPTConfig(...)`` / ``GPTConfig.from_preset(...)`` calls given a flat field, as 'line: field';
    a ``**`` splat whose keys cannot be read in its function counts as flat ('line: **name')."""
    found = []
    scopes = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for scope in [tree, *scopes]:
        for node in _own_nodes(scope):
            if not (isinstance(node, ast.Call) and _builds_config(node.func)):
                continue
            for k in node.keywords:
                keys = {k.arg} if k.arg is not None else _keys(k.value, scope, frozenset(), functions)
                if keys is None:
                    found.append(f"{node.lineno}: **{ast.unparse(k.value)}")
                else:
                    found += [f"{node.lineno}: {key}" for key in sorted(keys & set(DEFAULTS))]
    return found


def _builds_config(f: ast.expr) -> bool:
    return (isinstance(f, ast.Name) and f.id == "GPTConfig") or (
        isinstance(f, ast.Attribute) and f.attr in ("GPTConfig", "from_preset")
    )


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of ``scope`` outside the functions nested in it."""
    out, todo = [], list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(node)
            todo += ast.iter_child_nodes(node)
    return out


def _keys(expr: ast.expr, scope: ast.AST, seen: frozenset[str], functions: dict) -> set[str] | None:
    """The string keys a dict expression can hold, read from its literals, the assignments to a name
    in ``scope`` and the returns of a function of the module; None when some cannot be read (a
    parameter, another module's function)."""
    parts: list[tuple[ast.expr | None, ast.AST]] = []
    keys: set[str] = set()
    if isinstance(expr, ast.Dict):
        for k, v in zip(expr.keys, expr.values):
            if k is None:
                parts.append((v, scope))
            elif isinstance(k, ast.Constant) and isinstance(k.value, str):
                keys.add(k.value)
            else:
                return None
    elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "dict":
        parts += [(a, scope) for a in expr.args]
        for k in expr.keywords:
            keys |= {k.arg} if k.arg is not None else set()
            parts += [(k.value, scope)] if k.arg is None else []
    elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in functions:
        if expr.func.id in seen:
            return keys
        fn = functions[expr.func.id]
        parts += [(r.value, fn) for r in _own_nodes(fn) if isinstance(r, ast.Return)] or [(None, fn)]
        seen = seen | {expr.func.id}
    elif isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        parts += [(expr.left, scope), (expr.right, scope)]
    elif isinstance(expr, ast.Name) and expr.id not in seen:
        parts += [(v, scope) for v in _assigned(expr.id, scope)] or [(None, scope)]
        seen = seen | {expr.id}
    elif not (isinstance(expr, ast.Name) and expr.id in seen):
        return None
    for part, where in parts:
        more = None if part is None else _keys(part, where, seen, functions)
        if more is None:
            return None
        keys |= more
    return keys


def _assigned(name: str, scope: ast.AST) -> list[ast.expr]:
    """What ``scope`` assigns to ``name``: its values, ``|=`` operands, ``update`` arguments and
    ``name["key"] = ...`` keys (as one-key dicts)."""
    values: list[ast.expr] = []
    for node in _own_nodes(scope):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id == name:
                    values.append(node.value)
                elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == name:
                    values.append(ast.Dict(keys=[t.slice], values=[node.value]))
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            values.append(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
        ):
            values.append(ast.Call(func=ast.Name(id="dict"), args=node.args, keywords=node.keywords))
    return values


def variants_imports(tree: ast.Module) -> list[int]:
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Import)
            and any(a.name == "posenc.variants" for a in node.names)
            or isinstance(node, ast.ImportFrom)
            and (
                node.module == "posenc.variants"
                or (node.module == "posenc" and any(a.name == "variants" for a in node.names))
            )
        ):
            found.append(node.lineno)
    return found


def test_no_gptconfig_from_flat_fields_outside_the_edge() -> None:
    bad = {name: calls for name, tree in _modules() if not _allowed(name, FLAT_EDGE) and (calls := flat_calls(tree))}
    assert not bad, f"GPTConfig built from flat fields (give layers/embedding/head) in {bad}"


def test_no_variants_import_outside_the_edge() -> None:
    bad = {
        name: lines
        for name, tree in _modules()
        if not _allowed(name, VARIANTS_USERS) and (lines := variants_imports(tree))
    }
    assert not bad, f"posenc.variants imported (at lines) outside the edge in {bad}"


@pytest.mark.parametrize(
    "code, calls, imports",
    [
        ("GPTConfig(n_layer=2, pe='rope')", ["1: pe"], []),
        ("config.GPTConfig.from_preset('tiny', bias=False)", ["1: bias"], []),
        ("GPTConfig(n_layer=2, layers=(LayerSpec(),))", [], []),
        ("def f(c):\n    s = dict(n_layer=2)\n    s['n_head'] = 2\n    return GPTConfig(**s, layers=())", [], []),
        ("def f(c):\n    s = dict(n_layer=2)\n    s['qk_norm'] = True\n    return GPTConfig(**s)", ["4: qk_norm"], []),
        ("def f(c):\n    s = {'n_layer': 2}\n    s.update(pe='rope')\n    return GPTConfig(**s)", ["4: pe"], []),
        (
            "def f(model):\n    return GPTConfig.from_preset('tiny', **({'n_layer': 2} | model))",
            ["2: **{'n_layer': 2} | model"],
            [],
        ),
        ("def f(c):\n    s = fields(c)\n    return GPTConfig(**s)", ["3: **s"], []),
        ("def g(c):\n    return dict(n_layer=2)\ndef f(c):\n    return GPTConfig(**g(c), layers=())", [], []),
        (
            "def g(c):\n    d = dict(n_layer=2)\n    d['bias'] = c\n    return d\ndef f(c):\n    return GPTConfig(**g(c))",
            ["6: bias"],
            [],
        ),
        ("from posenc.variants import variant", [], [1]),
        ("def f():\n    from posenc import variants", [], [2]),
        ("import posenc.variants as v", [], [1]),
    ],
)
def test_the_scan_finds_flat_fields_and_variants_imports(code: str, calls: list, imports: list) -> None:
    tree = ast.parse(code)
    assert flat_calls(tree) == calls and variants_imports(tree) == imports
