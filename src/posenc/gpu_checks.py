"""What a GPU has checked: the record that ``benchmarks/check_flex.py --record`` writes beside this
module (``gpu_checks.json``, package data) after running on CUDA, and the one question ``auto``
asks of it: was this case checked there, and did it pass?

``attend(backend="auto")`` sends a call to compiled FlexAttention, and ``apply_rotary`` a rotation
to the Triton kernel, only when the record holds the call's case as passed
(:func:`posenc.attention.kernel.flex_case`, :func:`posenc.encodings.rotation.rotary_case`). Without
a record -- no GPU check committed -- ``auto`` takes neither on CUDA; both stay available by name
(``backend="flex"``, ``posenc.encodings.rotation.TRITON_ROTARY = True``).

The record (JSON): ``device``, ``torch``, ``cuda`` and ``triton`` versions the check ran under, the
command, and ``cases``: one row per case checked, ``{"case": label, "key": the case's key or null,
"backward": whether gradients were checked too, "ok": within its bar, "max_error": ...}``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

#: where the library reads the record (tests point it elsewhere)
RECORD = Path(__file__).with_name("gpu_checks.json")


@functools.cache
def _passed(path: Path) -> dict[str, bool]:
    """The record's passing case keys -> whether their gradients were checked too."""
    if not path.exists():
        return {}
    rows = json.loads(path.read_text()).get("cases", [])
    passed: dict[str, bool] = {}
    for row in rows:
        if row.get("ok") and row.get("key"):
            passed[row["key"]] = passed.get(row["key"], False) or bool(row.get("backward"))
    return passed


def checked(key: str | None, *, backward: bool = False) -> bool:
    """Whether a committed GPU check passed the case ``key`` (with its gradients, if ``backward``)."""
    if key is None:
        return False
    passed = _passed(RECORD)
    return key in passed and (passed[key] or not backward)


def record() -> dict:
    """The whole record ({} when no GPU check is committed)."""
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}
