"""A run as an object: ``RunSpec(model=GPTConfig, train=TrainConfig)``, its identity, and the copy of
it that every run folder holds (``run.json``, written as soon as the folder is created).

The identity of a run is a hash of its resolved spec -- everything that decides what is trained,
not where (``out_dir``) or on which device -- so two ways of asking for the same run (a variant
name, a layer pattern, explicit layer specs; the command line or the library) are the same run,
and a folder started with other settings is recognised as such (:meth:`RunSpec.differences`).

``run.json`` is what makes a run resumable at any moment: ``posenc train --resume --out-dir DIR``
continues from the latest checkpoint, or starts from step 0 with the saved spec when the run was
killed before its first checkpoint.

One process at a time trains in a folder: :func:`hold_folder` takes an exclusive ``fcntl.flock`` on
``run.lock`` there (with the holder's pid in it while held), which the operating system releases
when the process ends, however it ends -- a killed run leaves no stale lock. :func:`refuse_another_run`
words the refusal of a folder that holds another run; :func:`clear_run` removes a run's files
(``--overwrite``), nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posenc.config import PRESETS, GPTConfig
from posenc.io import atomic_write
from posenc.train.config import TRAIN_PRESETS, TrainConfig
from posenc.train.source import is_pretrained, source_config

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

SPEC_NAME = "run.json"
LOCK_NAME = "run.lock"
RUN_FORMAT = 1
#: What a run writes in its folder (files and folders): what ``clear_run`` removes.
RUN_FILES: tuple[str, ...] = (
    SPEC_NAME,
    "checkpoints.json",
    "ckpt-*.pt",
    "log.jsonl",
    "summary.json",
    "samples.txt",
    "curves.png",
    "eval.json",
    "diverged.json",
    "train.out",
    "tensorboard",
    "wandb",
)
#: TrainConfig fields that say where and on what a run trains, not what: outside its identity.
PLACEMENT: tuple[str, ...] = ("out_dir", "device")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one training run: the model and the run configuration."""

    model: GPTConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPTConfig):
            raise TypeError(f"RunSpec.model must be a GPTConfig, got {type(self.model).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"RunSpec.train must be a TrainConfig, got {type(self.train).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": RUN_FORMAT, "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        if d.get("format") != RUN_FORMAT:
            raise ValueError(f"run spec format {d.get('format')!r} is not one this posenc reads ({RUN_FORMAT})")
        return cls(GPTConfig.from_dict(d["model"]), TrainConfig.from_dict(d["train"]))

    def what(self) -> dict[str, Any]:
        """The spec without its placement: what its identity hashes."""
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k not in PLACEMENT}
        return d

    def identity(self) -> str:
        """A hash of what is trained (16 hex digits)."""
        return hashlib.sha256(json.dumps(self.what(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: RunSpec) -> list[str]:
        """The fields in which ``other`` asks for another run, as ``path: mine != theirs`` lines."""
        return _differences(self.what(), other.what(), "")

    def replace(self, *, model: GPTConfig | None = None, **train: Any) -> RunSpec:
        """A copy with another model and/or these TrainConfig fields changed."""
        return RunSpec(self.model if model is None else model, self.train.replace(**train) if train else self.train)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/run.json`` (atomically), creating the folder."""
        path = Path(folder) / SPEC_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RunSpec | None:
        """The spec saved in ``folder``, or None when it holds none."""
        path = Path(folder) / SPEC_NAME
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a readable run spec: {e}") from None


def build_spec(
    preset: str, *, model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None
) -> RunSpec:
    """The run of the train preset ``preset`` (``TRAIN_PRESETS``) with GPTConfig fields ``model``
    (a ``"model"`` key picks another model preset; flat sugar such as ``pe`` or ``layer_pattern``, or
    ``layers``) and TrainConfig fields ``train`` on top. The vocabulary grows to the tokenizer's,
    padded to a multiple of 64 as nanoGPT does for GPT-2. The command line and the sweep both build
    their runs here."""
    from posenc.data import get_tokenizer

    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown run preset {preset!r}; known: {sorted(TRAIN_PRESETS)}")
    values = dict(TRAIN_PRESETS[preset])
    model = dict(model or {})
    model_preset = model.pop("model", None) or values.pop("model")
    values.pop("model", None)
    cfg = TrainConfig(**(values | dict(train or {})))
    if is_pretrained(cfg.init_from):  # the architecture and (unless given) the tokenizer are the source's
        tokenizer = {} if "tokenizer" in (train or {}) else {"tokenizer": str(cfg.init_from)}
        return RunSpec(source_config(str(cfg.init_from), model), cfg.replace(**tokenizer))
    if model_preset not in PRESETS:
        raise ValueError(f"unknown model preset {model_preset!r}; known: {sorted(PRESETS)}")
    vocab = PRESETS[model_preset]["vocab_size"]
    tokenizer_vocab = get_tokenizer(cfg.tokenizer).vocab_size
    if tokenizer_vocab > vocab:
        vocab = 64 * -(-tokenizer_vocab // 64)
    return RunSpec(GPTConfig.from_preset(model_preset, **({"vocab_size": vocab} | model)), cfg)


class FolderInUse(ValueError):
    """Another process trains in this run folder."""


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder`` (created if new) for this process while inside; a folder another process
    holds is refused at once with :class:`FolderInUse`, naming it and the holder's pid."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "(pid not yet written)"
            raise FolderInUse(
                f"{folder} is in use by process {pid}, which trains in it now; wait for it to end or stop it "
                "(it checkpoints on SIGTERM), or use another --out-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file names a holder only while held
    finally:
        os.close(fd)  # releases the lock


def refuse_another_run(folder: str | os.PathLike, saved: RunSpec, asked: RunSpec) -> None:
    """Raise a ValueError when ``folder``, which holds ``saved``, is asked to train ``asked``, another
    run: the fields that differ (saved != asked), one per line, and the ways on."""
    if saved.identity() == asked.identity():
        return
    diff = saved.differences(asked)
    shown = "\n".join(f"  {line}" for line in diff[:8]) + (f"\n  ... and {len(diff) - 8} more" if len(diff) > 8 else "")
    raise ValueError(
        f"{folder} was started with other settings (saved != asked now):\n{shown}\n"
        f"To continue the saved run: posenc train --resume --out-dir {folder}\n"
        "To train the new settings: give another --out-dir, or --overwrite to delete the saved run and start again"
    )


def clear_run(folder: str | os.PathLike) -> list[str]:
    """Remove the files a run wrote in ``folder`` (:data:`RUN_FILES`; other files stay); their names."""
    removed = []
    for pattern in RUN_FILES:
        for path in sorted(Path(folder).glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]
