"""Adding to posenc is one file, one registry line and one test file, with no edit elsewhere.

Each test here defines a throwaway component as a user would in their own file, adds the one
registry line at run time (undone afterwards), and uses it through the rest of the library:

- a score-bias encoding: built by ``GPTConfig(pe=...)`` and by a layer pattern, serialised, trained by
  ``compare --quick`` and rendered on its page with a default row name;
- a RoPE frequency schedule: through ``RotaryEmbedding`` and ``GPTConfig.rope_scaling``;
- an attention variant with an option of its own: through ``GPTConfig(attention=...)``;
- a Hugging Face model family: through ``GPT.from_hf``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc import GPT, GPTConfig
from posenc import sweep as compare
from posenc.attention import ATTENTIONS, CausalSelfAttention
from posenc.encodings import ENCODINGS
from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding
from posenc.encodings.rope import RotaryEmbedding
from posenc.encodings.rope_scaling import ROPE_SCALINGS, Schedule, default_inv_freq
from posenc.hf import FAMILIES, IMPORTERS, Family
from posenc.spec import check_number, spec

# -- a score-bias encoding ---------------------------------------------------------------------------


class LearnedSlope(PositionalEncoding):
    """ALiBi with one learned slope per head: -softplus(s_h) * (i - j)."""

    where = "scores"

    @spec
    class Config(EncodingConfig):
        init_slope: float = 0.5

        def __post_init__(self) -> None:
            check_number("LearnedSlope.Config", "init_slope", self.init_slope, low=0)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        self.config = config
        raw = math.log(math.expm1(config.init_slope))  # softplus(raw) = init_slope
        self.raw_slope = nn.Parameter(torch.full((dims.n_head,), raw))

    def score_bias(self, q_positions: Tensor, k_positions: Tensor, q_features=None, k_features=None) -> Tensor:
        distance = (q_positions[..., :, None] - k_positions[..., None, :]).float()  # (Tq, Tk) or (B, Tq, Tk)
        if distance.dim() == 3:
            distance = distance[:, None]
        return -F.softplus(self.raw_slope.float()).view(-1, 1, 1) * distance


@pytest.fixture
def learned_slope(monkeypatch):
    monkeypatch.setitem(ENCODINGS, "learned_slope", ("L", LearnedSlope))  # the one registry line
    return "learned_slope"


def test_a_new_encoding_is_a_variant_a_layer_code_and_a_config(learned_slope):
    config = GPTConfig.from_preset("tiny", pe=learned_slope, pe_options={learned_slope: {"init_slope": 0.25}})
    assert config.layer_codes == ("L",) * 4
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = GPT(config)
    assert all(isinstance(b.attn.pe, LearnedSlope) for b in model.blocks)
    assert F.softplus(model.blocks[0].attn.pe.raw_slope).tolist() == pytest.approx([0.25, 0.25])
    mixed = GPTConfig.from_preset("tiny", layer_pattern="lRNR", sliding_window=4)
    assert mixed.layer_codes == ("l", "R", "N", "R") and mixed.layers[0].window == 4
    with torch.no_grad():  # cached decoding equals the full forward, with the kernel's linear-memory path
        model.eval()
        idx = torch.randint(0, 256, (1, 12))
        cache = model.new_cache()
        steps = torch.cat([model(idx[:, i : i + 1], cache=cache)[0] for i in range(12)], dim=1)
        torch.testing.assert_close(steps, model(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_new_encoding_trains_in_compare_and_renders_on_the_page(learned_slope, tmp_path, data_dir):
    page = tmp_path / "page.md"
    argv = ["--quick", "--variants", learned_slope, "--seeds", "0", "--jobs", "1", "--threads", "1"]
    argv += ["--out", str(tmp_path / "out"), "--data-dir", str(data_dir), "--render", str(page)]
    assert compare.run(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    run = results["runs"][f"{learned_slope}/s0"]
    assert run["val_loss"] < run["curve"][0]["val_loss"] - 1.0  # it learned
    assert {layer["pe"]["name"] for layer in run["architecture"]["layers"]} == {learned_slope}
    assert run["kv_cache_bytes"] == 4 * 2 * 128 * 2  # 4 layers of MHA keys and values, fp16
    text = page.read_text()
    assert f"| GPT {learned_slope} |" in text and f"(`{learned_slope}`): the {learned_slope} variant" in text


# -- a RoPE frequency schedule -------------------------------------------------------------------


def halved(rotary_dim: int, rope_base: float, params: dict, seq_len=None, *, device=None) -> tuple[Tensor, float]:
    """Every frequency divided by ``divisor``: position interpolation under another name."""
    return default_inv_freq(rotary_dim, rope_base, device) / params["divisor"], 1.0


def test_a_new_rope_schedule_is_one_function_and_one_line(monkeypatch):
    monkeypatch.setitem(ROPE_SCALINGS, "halved", Schedule(halved, frozenset({"divisor"})))
    rope = RotaryEmbedding(16, scaling={"rope_type": "halved", "divisor": 2.0})
    linear = RotaryEmbedding(16, scaling={"rope_type": "linear", "factor": 2.0})
    q = torch.randn(1, 2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(rope(q, q)[0], linear(q, q)[0], rtol=0, atol=0)
    config = GPTConfig.from_preset("tiny", pe="rope", rope_scaling={"rope_type": "halved", "divisor": 2.0})
    assert config.layers[0].pe.scaling["divisor"] == 2.0
    with pytest.raises(ValueError, match="missing required key 'divisor'"):
        RotaryEmbedding(16, scaling={"rope_type": "halved"})


# -- an attention variant ------------------------------------------------------------------------


class TemperedAttention(CausalSelfAttention):
    """Multi-head attention whose logits are divided by a fixed temperature ``tau``, an option of its own."""

    @spec
    class Config(CausalSelfAttention.Config):
        tau: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            check_number("TemperedAttention.Config", "tau", self.tau, low=0)

    def attend(self, q, k, v, q_pos, k_pos, segments, features, scale):
        scale = (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale) / self.config.tau
        return super().attend(q, k, v, q_pos, k_pos, segments, features, scale)


def test_a_new_attention_variant_is_one_file_and_one_line(monkeypatch):
    monkeypatch.setitem(ATTENTIONS, "tempered", TemperedAttention)
    config = GPTConfig.from_preset("tiny", pe="rope", attention="tempered", attention_options={"tau": 2.0})
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    torch.manual_seed(0)
    model = GPT(config).double().eval()
    assert isinstance(model.blocks[0].attn, TemperedAttention) and model.blocks[0].attn.config.tau == 2.0
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_preset("tiny", pe="rope")).double().eval()
    assert model.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert (model(idx)[0] - plain(idx)[0]).abs().max() > 1e-5  # the temperature is used: it is
        for block in plain.blocks:  # the plain model with its queries divided by tau
            block.attn.c_attn.weight[: config.n_embd] /= 2.0
        torch.testing.assert_close(model(idx)[0], plain(idx)[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="tau"):
        GPTConfig.from_preset("tiny", attention="tempered", attention_options={"tau": -1.0})


# -- an option of an existing attention variant -------------------------------------------------


def test_an_attention_option_is_its_config_its_module_and_one_test(monkeypatch):
    """A ``logit_gain`` option of multi-head attention: a field of its config and a line of its module
    (both patched here, as an edit of attention/core.py would), then built, serialised and run with no
    other change: the layer spec, GPTConfig, the model and its initialisation take it as it is."""
    plain_attend = CausalSelfAttention.attend

    @spec
    class Config(CausalSelfAttention.Config):
        logit_gain: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            check_number("CausalSelfAttention.Config", "logit_gain", self.logit_gain, low=0)

    def attend(self, q, k, v, q_pos, k_pos, segments, features, scale):
        scale = (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale) * self.config.logit_gain
        return plain_attend(self, q, k, v, q_pos, k_pos, segments, features, scale)

    monkeypatch.setattr(CausalSelfAttention, "Config", Config)  # the config's new field
    monkeypatch.setattr(CausalSelfAttention, "attend", attend)  # the module's use of it
    # flat fields, not a preset: the presets' parts were built with the config class before the patch
    sizes = dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=256)
    config = GPTConfig(**sizes, pe="rope", attention_options={"logit_gain": 2.0})
    assert config.layers[0].attention.logit_gain == 2.0
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    torch.manual_seed(0)
    model = GPT(config).double().eval()
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**sizes, pe="rope")).double().eval()
    torch.testing.assert_close(model.state_dict(), plain.state_dict(), rtol=0, atol=0)
    idx = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert (model(idx)[0] - plain(idx)[0]).abs().max() > 1e-5
        for block in plain.blocks:  # the plain model with its queries doubled
            block.attn.c_attn.weight[: config.n_embd] *= 2.0
        torch.testing.assert_close(model(idx)[0], plain(idx)[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="logit_gain"):
        GPTConfig(**sizes, attention_options={"logit_gain": -1.0})


# -- a Hugging Face model family -----------------------------------------------------------------


def import_toy(model: nn.Module):
    """A 'toy' family: a GPT-2 under another model_type, its weights already named as posenc's."""
    c = model.config
    config = GPTConfig(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        block_size=c.n_positions,
        vocab_size=c.vocab_size,
        pe="absolute",
    )
    return config, dict(model.state_dict())


def test_a_new_hugging_face_family_is_one_file_and_one_line(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", Family(import_toy))  # the one registry line
    assert IMPORTERS["toy"] is import_toy  # seen through the read-only view
    torch.manual_seed(0)
    source = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, pe="absolute")).eval()
    source.config_for_hf = SimpleNamespace(
        model_type="toy", n_layer=2, n_head=2, n_embd=16, n_positions=8, vocab_size=32
    )
    wrapped = nn.Module()
    wrapped.config = source.config_for_hf
    wrapped.state_dict = source.state_dict
    ours = GPT.from_hf(wrapped).eval()
    idx = torch.randint(0, 32, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], source(idx)[0], rtol=0, atol=0)
