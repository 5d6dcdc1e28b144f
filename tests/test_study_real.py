"""The real-model study (``compare --study real``): on a tiny random llama-shaped model with a byte
tokenizer (always), and its ``--quick`` form on SmolLM2-135M (skipped when the model is absent)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from posenc import GPT, GPTConfig
from posenc.data.tokenizers import ByteTokenizer
from posenc.encodings.rope_scaling import dynamic_schedule
from posenc.evaluate import token_losses
from posenc.jobs import Sweep
from posenc.report.real import real_markdown
from posenc.studies import real, real_data
from posenc.sweep import SWEEP_PRESETS

SETTINGS = real.Settings(windows=2, ablation_windows=2, ablation_len=32, context=512, chunk=256, bucket=128)


def tiny_llama(block_size: int = 512) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=3, n_head=4, n_kv_head=2, n_embd=32, block_size=block_size, vocab_size=256, bias=False,
        pe="rope", norm="rmsnorm", mlp="swiglu", rope_base=1e4,
    )  # fmt: skip
    return GPT(config).eval()


def sweep(out: Path) -> Sweep:
    return Sweep(name="test", preset=SWEEP_PRESETS["test"], out=out, device=torch.device("cpu"), command="test")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    model = tiny_llama()
    assert real.run_model(model, ByteTokenizer(), {"path": "tiny"}, SETTINGS, sweep(out)) == 0
    return out, json.loads((out / "real.json").read_text())


def test_every_row_and_window_is_scored(tiny_run):
    out, results = tiny_run
    rows = set(results["rows"])
    assert set(real.SCHEDULES) <= rows and set(real.BANDS) <= rows
    assert {f"layer {i} NoPE" for i in range(3)} <= rows
    assert set(results["units"]) == {f"{r}/w{w}" for r in rows for w in range(2)}
    ext = results["units"]["none/w0"]
    assert len(ext["hits"]) == 3 and len(ext["sums"]) == 1024 // 128
    assert results["python"] and len(results["tokens_sha256"]) == 64


def test_a_rerun_scores_nothing_again(tiny_run, capsys):
    out, results = tiny_run
    assert real.run_model(tiny_llama(), ByteTokenizer(), {"path": "tiny"}, SETTINGS, sweep(out)) == 0
    assert "[real] none window" not in capsys.readouterr().out
    assert json.loads((out / "real.json").read_text())["units"] == results["units"]


def test_no_train_writes_what_is_saved_and_the_page_says_the_rest_is_pending(tiny_run, tmp_path):
    out, results = tiny_run
    more = dataclasses.replace(SETTINGS, windows=3, evaluate=False)
    assert real.run_model(tiny_llama(), ByteTokenizer(), {"path": "tiny"}, more, sweep(out)) == 0
    partial = json.loads((out / "real.json").read_text())
    assert partial["units"] == results["units"]  # nothing evaluated, nothing lost
    page = real_markdown(partial, [], "results-real")
    assert "Partial run" in page and "none" in page.split("Partial run")[1].split("\n")[0]


def test_rows_evaluates_only_the_rows_named(tmp_path, capsys):
    only = dataclasses.replace(SETTINGS, windows=1, ablation_windows=1, rows=("YaRN",))
    assert real.run_model(tiny_llama(), ByteTokenizer(), {"path": "tiny"}, only, sweep(tmp_path)) == 0
    assert set(json.loads((tmp_path / "real.json").read_text())["units"]) == {"YaRN/w0"}
    with pytest.raises(ValueError, match="no such row"):
        real.run_model(tiny_llama(), ByteTokenizer(), {}, dataclasses.replace(only, rows=("yarn",)), sweep(tmp_path))


def test_cached_chunks_give_the_losses_of_one_forward():
    model = tiny_llama()
    tokens = torch.randint(0, 256, (513,))
    losses, _ = real.sequence_losses(model, tokens, chunk=128)
    full = token_losses(model, tokens[None], 512)[0]
    torch.testing.assert_close(losses, full, atol=1e-5, rtol=1e-5)


def test_the_unmodified_rows_losses_are_the_models(tiny_run):
    """The extension row 'none' at the first half of window 0 equals a plain forward's loss there."""
    out, results = tiny_run
    seq = real_data.extension_sequences(ByteTokenizer(), 1, 1024, SETTINGS.seed)[0]
    losses, _ = real.sequence_losses(tiny_llama(1024), torch.tensor(seq.tokens), chunk=1024)
    keep = torch.ones(len(losses), dtype=torch.bool)
    for lo, hi in seq.planted:
        keep[max(lo - 1, 0) : hi] = False
    unit = results["units"]["none/w0"]
    assert unit["sums"][0] == pytest.approx(float(losses[:127][keep[:127]].sum()), rel=1e-5)


def test_a_variant_is_the_model_its_config_builds():
    model = tiny_llama()
    for change in [*real.ablation_rows(model.config).values(), real.rope_change(real.SCHEDULES["YaRN"](256, 8, 1e4))]:
        config = change(model.config)
        built = GPT(config).eval()
        built.load_state_dict(model.state_dict())
        x = torch.randint(0, 256, (1, 300))
        torch.testing.assert_close(real.variant(model, config)(x)[0], built(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="encodings only"):
        real.variant(model, model.config.replace(n_embd=64, n_head=8))


def test_dynamic_ntk_at_one_length_is_a_base_change():
    inv, _ = dynamic_schedule(64, 1e5, {"factor": 1.0, "max_position_embeddings": 8192}, 16384)
    base = real.dynamic_base(1e5, 64, 16384, 8192)
    torch.testing.assert_close(inv, base ** -(torch.arange(0, 64, 2, dtype=torch.float64) / 64))


def test_frequency_bands_remove_the_rotation_where_they_say():
    config = tiny_llama().config
    rows = real.ablation_rows(config)
    for name, zero in (("lowest 25% removed", slice(3, 4)), ("highest 25% removed", slice(0, 1))):
        pe = GPT(rows[name](config)).blocks[0].attn.pe
        freqs = pe.frequencies(100)
        assert (freqs[zero] < 1e-25).all() and (freqs[~torch.isin(torch.arange(4), torch.arange(4)[zero])] > 1e-4).all()
    nope = GPT(rows["layer 1 NoPE"](config))
    assert [b.attn.pe.__class__.__name__ for b in nope.blocks] == ["RotaryEmbedding", "NoPE", "RotaryEmbedding"]


def test_passkeys_are_planted_where_their_queries_can_reach_them():
    seq = real_data.extension_sequences(ByteTokenizer(), 1, 2048, 0)[0]
    assert len(seq.tokens) == 2048
    assert [hi for _, hi in seq.answers] == [1024, 1536, 2048]
    text = bytes(seq.tokens).decode()
    for key, (lo, hi), at in zip(real_data.KEYS, seq.answers, seq.key_positions, strict=True):
        value = bytes(seq.tokens[lo:hi]).decode().strip()
        assert f"pass key for {key} is {value}." in text[:lo] and at < lo


def test_the_page_says_every_row(tiny_run):
    _, results = tiny_run
    page = real_markdown(results, [], "results-real")
    for row in [*real.SCHEDULES, *real.BANDS]:
        assert row in page
    assert results["tokens_sha256"][:12] in page and results["python"] in page


def tiny_gemma() -> GPT:
    """Two sliding-window layers to one global one, with a RoPE scaling mapping as Gemma 3's import has."""
    torch.manual_seed(1)
    config = GPTConfig(
        n_layer=3, n_head=4, n_kv_head=1, n_embd=32, block_size=256, vocab_size=256, bias=False,
        layer_pattern="rrR", sliding_window=16, rope_base=1e4, norm="rmsnorm", mlp="swiglu",
    )  # fmt: skip
    scaling = {"rope_type": "default", "max_position_embeddings": 256}
    return GPT(config.with_encoding("rope", scaling=scaling)).eval()


def test_a_second_model_runs_its_ablations_beside_with_local_and_global_layers_apart(tmp_path):
    beside = (tiny_gemma(), ByteTokenizer(), {"path": "models/tiny-gemma.gguf", "sha256": None})
    settings = dataclasses.replace(SETTINGS, windows=1)
    assert real.run_model(tiny_llama(), ByteTokenizer(), {"path": "tiny"}, settings, sweep(tmp_path), beside) == 0
    results = json.loads((tmp_path / "real.json").read_text())
    other = results["beside"]
    kinds = {"local layers NoPE", "global layers NoPE", "local: highest 25% removed", "global: lowest 50% removed"}
    assert kinds <= set(other["rows"]) and not set(real.SCHEDULES) & set(other["rows"])
    assert not kinds & set(results["rows"])  # the first model has global layers only
    assert other["model"]["local_layers"] == [0, 1] and other["model"]["window"] == 16
    assert set(other["units"]) == {f"{r}/w{w}" for r in other["rows"] for w in range(2)}
    assert (tmp_path / "real" / "beside-tiny-gemma" / "local-layers-nope-w1.json").is_file()
    page = real_markdown(results, [], "results-real")
    assert "## Where position lives in tiny-gemma.gguf, beside tiny" in page
    assert "| layer 2 NoPE (global) |" in page and "| layer 0 NoPE (local) |" in page
    assert "one local layer to NoPE, mean over 2 layers" in page


def test_a_kind_of_layer_changes_only_in_its_layers():
    config = tiny_gemma().config
    rows = real.ablation_rows(config)
    local = rows["local: lowest 50% removed"](config)
    assert [layer.pe.p_rope for layer in local.layers] == [0.5, 0.5, config.layers[2].pe.p_rope]
    glob = rows["global layers NoPE"](config)
    assert [layer.encoding for layer in glob.layers] == ["rope", "rope", "nope"]


def test_quick_study_on_the_real_model(tmp_path):
    from posenc import sweep as compare
    from posenc.pretrained import MODELS, cache_dir

    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    path = cache_dir() / MODELS[real.MODEL].file
    if not path.is_file():
        pytest.skip(f"{path.name} is not in {cache_dir()}: run `posenc fetch {real.MODEL}` first")
    argv = ["--study", "real", "--quick", "--out", str(tmp_path), "--device", "cpu"]
    assert compare.run(argv) == 0
    results = json.loads((tmp_path / "real.json").read_text())
    assert results["settings"]["context"] == real.QUICK.context
    assert len(results["units"]) == len(results["rows"])  # every row, one window each
    none = results["units"]["none/w0"]
    assert sum(none["sums"]) / sum(none["counts"]) < 6.0  # a trained model, not a random one (ln V = 10.8)


def test_a_page_shows_a_cached_model_under_the_home_folder_as_tilde(tmp_path):
    cached = Path.home() / ".cache" / "posenc" / "models" / "m.gguf"
    assert real_data.shown_path(str(cached)) == "~/.cache/posenc/models/m.gguf"
    if not tmp_path.resolve().is_relative_to(Path.home().resolve()):  # a path elsewhere is shown as given
        assert real_data.shown_path(str(tmp_path / "m.gguf")) == str(tmp_path / "m.gguf")
