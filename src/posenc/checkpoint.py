"""Checkpoints that survive being killed at any moment, and that refuse clearly when damaged.

Layout of a run folder::

    ckpt-0000040.pt     # torch.save of a plain dict; loads with torch.load(weights_only=True)
    checkpoints.json    # manifest: the latest file, with its size and sha256 -- the commit point

A save writes the new ``.pt`` under a temporary name, fsyncs it, renames it, and only then
replaces the manifest (again temp file + fsync + rename). A process killed at any instant leaves
the manifest pointing at a complete, checksummed file. Loading verifies size and sha256 before
unpickling, so truncation or a flipped byte raises :class:`CheckpointError` (path and reason),
never a zip-reader traceback and never a silent fresh start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from posenc.io import atomic_write, sha256_file

MANIFEST = "checkpoints.json"
REQUIRED_KEYS: tuple[str, ...] = ("model", "optimizer", "scaler", "step", "rng", "config", "train_config", "stats")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path}: {reason}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip ``_orig_mod.`` / ``module.`` prefixes so any wrapper's state loads into a plain model."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``run_dir``, or ``None`` when no checkpoint was ever committed there."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["latest"], manifest["sha256"], manifest["bytes"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"unreadable manifest ({e!r})") from None
    return manifest


def save_checkpoint(state: Mapping[str, Any], run_dir: str | os.PathLike, *, keep: int = 2) -> Path:
    """Write ``state`` (must hold an int ``step``) as ``run_dir/ckpt-<step>.pt`` and commit it in the
    manifest; older checkpoint files beyond the newest ``keep`` are removed after the commit."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in run_dir.glob(".*.tmp"):  # half-written files of a save that was killed
        leftover.unlink(missing_ok=True)
    path = run_dir / f"ckpt-{int(state['step']):07d}.pt"
    atomic_write(path, lambda f: torch.save(dict(state), f))
    manifest = {
        "latest": path.name,
        "step": int(state["step"]),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    atomic_write(run_dir / MANIFEST, json.dumps(manifest, indent=1))
    old = sorted(run_dir.glob("ckpt-*.pt"))[:-keep] if keep > 0 else []
    for stale in old:
        if stale.name != path.name:
            stale.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", required: tuple[str, ...] = REQUIRED_KEYS
) -> dict[str, Any]:
    """Load a checkpoint from a run folder (via its manifest) or a ``.pt`` file.

    A file listed in its folder's manifest is checked against the recorded size and sha256;
    every failure raises :class:`CheckpointError` with the path and the reason.
    """
    path = Path(path)
    expected: dict[str, Any] | None = None
    if not path.exists():
        raise CheckpointError(path, "does not exist (neither a run folder nor a checkpoint file)")
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is None:
            raise CheckpointError(path, f"no {MANIFEST} here: no checkpoint was ever completed in this folder")
        expected, path = manifest, path / manifest["latest"]
    else:
        manifest = read_manifest(path.parent) if path.parent.exists() else None
        if manifest is not None and manifest["latest"] == path.name:
            expected = manifest
    if not path.exists():
        raise CheckpointError(path, "file does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "file is empty (0 bytes)")
    if expected is not None:
        if size != expected["bytes"]:
            raise CheckpointError(
                path, f"size is {size} bytes, the manifest recorded {expected['bytes']} (truncated or partial write)"
            )
        digest = sha256_file(path)
        if digest != expected["sha256"]:
            raise CheckpointError(
                path, f"sha256 {digest[:12]}... does not match the manifest's {expected['sha256'][:12]}... (corrupted)"
            )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip reader / unpickler errors: report them as a damaged file
        raise CheckpointError(path, f"cannot be read by torch.load ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, expected a dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(path, f"missing key(s) {missing}")
    return state
