"""The FlexAttention path (posenc.attention.flex) and the elementwise biases it compiles.

Each encoding's ``elementwise_score_bias()`` (one head, one score, elementwise) must equal its
tile-wise ``score_bias`` in values and in its parameters' gradients: that is what lets FlexAttention
compute the bias inside its kernel. The path itself is checked against the blockwise kernel (itself
checked against a float64 dense reference in tests/test_blockwise.py): FlexAttention's unfused
implementation for every encoding, mask, feature and sink, and the compiled CPU kernel for every
elementwise encoding. This torch has no FlexAttention backward on CPU; the gradients are checked
through FlexAttention's reference backward with its device check lifted, and its backward graph by
the rule its CUDA compiler applies (test_the_backward_graph_compiles...). The Triton kernel itself
runs on a GPU only (benchmarks/check_flex.py, the first step of benchmarks/run_gpu.sh).
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc import GPT, GPTConfig, gpu_checks
from posenc.attention import kernel
from posenc.attention.blockwise import blockwise_attention
from posenc.attention.flex import flex_attention_path, flex_block_mask
from posenc.attention.kernel import attend, choose_backend
from posenc.encodings.alibi import ALiBi
from posenc.encodings.fire import FIRE
from posenc.encodings.fox import ForgetGate
from posenc.encodings.kerple import KerpleLog
from posenc.encodings.t5 import T5RelativeBias

TOL = dict(rtol=1e-5, atol=1e-5)


def make_encoding(name: str | None, n_head: int):
    """The elementwise encodings at settings that move the attention: a T5 table of std 1, FIRE's
    threshold inside the tested lengths (both of its regimes), FoX's gates off their zero init."""
    if name is None:
        return None
    torch.manual_seed(1)
    if name == "alibi":
        return ALiBi(n_head, bias_max=6.0)
    if name == "kerple":
        return KerpleLog(n_head)
    if name == "t5":
        enc = T5RelativeBias(n_head, num_buckets=8, max_distance=20, scale=2.0)
        torch.nn.init.normal_(enc.relative_attention_bias.weight)
        return enc
    if name == "fire":
        return FIRE(n_head, mlp_width=12, init_threshold=9.0)
    enc = ForgetGate(8, n_head)
    torch.nn.init.normal_(enc.gate.weight)
    return enc


NAMES = ["alibi", "kerple", "t5", "fire", "fox"]


def features(enc, B: int, T: int, seed: int = 3):
    """FoX's F_t for T tokens of random input, (B, nh, T, 1); None for a positional encoding."""
    if not isinstance(enc, ForgetGate):
        return None
    with torch.no_grad():
        return enc.token_features(torch.randn(B, T, 8, generator=torch.Generator().manual_seed(seed)))


def qkv(B, nh, n_kv, Tq, Tk, hs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, nh, Tq, hs, generator=g),
        torch.randn(B, n_kv, Tk, hs, generator=g),
        torch.randn(B, n_kv, Tk, hs, generator=g),
    )


# ----------------------------------------------------------------------------- elementwise_score_bias


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(
    n_head=st.integers(1, 6),
    Tq=st.integers(1, 12),
    Tk=st.integers(1, 30),
    offset=st.integers(0, 50),
    batched=st.booleans(),
)
def test_elementwise_score_bias_equals_score_bias(name, n_head, Tq, Tk, offset, batched):
    """Over a (head, query, key) grid the elementwise form gives ``score_bias``'s values, and the
    same gradients in every parameter (FIRE: its MLP unit by unit against its piecewise-linear form)."""
    enc = make_encoding(name, n_head)
    k_pos = torch.arange(Tk) + offset
    q_pos = torch.arange(Tq) + offset + Tk - Tq  # some queries ahead of every key, some behind
    if batched:
        q_pos, k_pos = torch.stack([q_pos, q_pos + 7]), torch.stack([k_pos, k_pos + 7])
    qf = kf = None
    if name == "fox":
        x = torch.randn(2, max(Tq, Tk), 8, generator=torch.Generator().manual_seed(n_head))
        every = enc.token_features(x)  # (2, nh, T, 1), differentiable in the gates
        qf, kf = every[:, :, -Tq:], every[:, :, :Tk]
    want = enc.score_bias(q_pos, k_pos, qf, kf)
    heads = torch.arange(n_head).view(-1, 1, 1)
    got = enc.elementwise_score_bias()(
        heads,
        q_pos[..., None, :, None],
        k_pos[..., None, None, :],
        None if qf is None else qf,
        None if kf is None else kf.transpose(-1, -2),
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.expand_as(want), want, rtol=1e-5, atol=1e-5)
    params = [p for p in enc.parameters() if p.requires_grad]
    if not params:  # ALiBi: fixed slopes
        return
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    g_want = torch.autograd.grad(want, params, upstream, allow_unused=True, retain_graph=True)
    g_got = torch.autograd.grad(got.expand_as(want), params, upstream, allow_unused=True)
    for a, b in zip(g_got, g_want, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_an_encoding_without_an_elementwise_bias_says_so():
    from posenc.encodings.cope import ContextualPosition

    assert not ContextualPosition.elementwise_bias
    assert all(type(make_encoding(name, 2)).elementwise_bias for name in NAMES)
    with pytest.raises(NotImplementedError, match="ContextualPosition has no elementwise score bias"):
        ContextualPosition.elementwise_score_bias(object.__new__(ContextualPosition))


# ----------------------------------------------------------------------------- the path, unfused


def assert_flex_matches_blockwise(enc, q, k, v, q_pos=None, k_pos=None, *, compiled=False, **kw):
    """flex_attention_path with the encoding's ``elementwise_score_bias()`` equals blockwise_attention with its
    ``score_bias`` (forward; no grad: this torch has no CPU FlexAttention backward)."""
    B, Tq, Tk = q.shape[0], q.shape[2], k.shape[2]
    every = features(enc, B, Tk)
    if every is not None:
        kw = dict(kw, q_features=every[:, :, Tk - Tq :], k_features=every)
    positions = dict(q_positions=q_pos, k_positions=k_pos)
    with torch.no_grad():
        want = blockwise_attention(q, k, v, score_bias=None if enc is None else enc.score_bias, **positions, **kw)
        got = flex_attention_path(
            q,
            k,
            v,
            score_bias=None if enc is None else enc.elementwise_score_bias(),
            compiled=compiled,
            **positions,
            **kw,
        )
    assert got.shape == want.shape and got.dtype == q.dtype
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", [None, *NAMES])
@pytest.mark.parametrize("mask", [{}, {"window": 6}, {"chunk": 7}])
def test_flex_matches_blockwise_unfused(name, mask):
    """Every elementwise encoding as a score_mod, with a GQA layout and a KV-cache offset (24 queries
    after 16 cached keys), positions offset from zero."""
    q, k, v = qkv(2, 4, 2, 24, 40, 16, seed=4)
    k_pos = torch.arange(40) + 2
    assert_flex_matches_blockwise(make_encoding(name, 4), q, k, v, k_pos[-24:], k_pos, **mask)


@pytest.mark.parametrize("name", [None, "alibi", "fox"])
def test_flex_sinks_softcap_segments_and_padding_unfused(name):
    """Sinks (a logit per head in the denominator, through the rows' log-sum-exp), a softcap, packed
    documents, left padding and per-row positions at once."""
    q, k, v = qkv(2, 4, 4, 32, 32, 16, seed=6)
    pos = torch.stack([torch.arange(32), torch.arange(32) + 100])
    seg = torch.zeros(2, 32, dtype=torch.long)
    seg[1, 12:] = 1
    pad = torch.ones(2, 32, dtype=torch.bool)
    pad[0, :5] = False
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    assert_flex_matches_blockwise(
        make_encoding(name, 4),
        q,
        k,
        v,
        pos,
        pos,
        q_segments=seg,
        k_segments=seg,
        key_padding_mask=pad,
        softcap=5.0,
        sinks=sinks,
    )


def test_flex_keeps_the_bias_in_float32_and_broadcasts_one_row_of_positions():
    """bf16 inputs: the bias is added to the float32 score unrounded (a bias of ~30 logits rounded
    to bf16 moves by up to 0.125); positions (1, T) serve every row, as in the blockwise kernel."""
    q, k, v = (t.to(torch.bfloat16) for t in qkv(2, 4, 2, 64, 64, 16, seed=9))
    enc = ALiBi(4, bias_max=2.0)  # slopes 0.71 .. 0.25: biases up to 45 logits
    pos = (torch.arange(64) + 7)[None]
    with torch.no_grad():
        want = blockwise_attention(q, k, v, score_bias=enc.score_bias, q_positions=pos, k_positions=pos)
        got = flex_attention_path(q, k, v, score_bias=enc.elementwise_score_bias(), q_positions=pos, k_positions=pos)
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-2)


def test_block_masks_cache_by_shape_apart_under_inference_mode():
    """Shape-only masks are cached, but one built under inference mode holds inference tensors,
    which a training forward cannot save: the two modes keep their own. Masks from segments are
    built per call (they depend on data), the keys' ids defaulting to the queries'."""
    first = flex_block_mask(40, 40, device="cpu", window=8)
    assert flex_block_mask(40, 40, device="cpu", window=8) is first
    with torch.inference_mode():
        inference = flex_block_mask(40, 40, device="cpu", window=8)
    assert inference is not first and not first.kv_indices.is_inference()
    seg = torch.zeros(2, 40, dtype=torch.long)
    seg[1, 20:] = 1
    both = flex_block_mask(40, 40, device="cpu", q_segments=seg, k_segments=seg)
    assert flex_block_mask(40, 40, device="cpu", q_segments=seg) is not both
    assert torch.equal(flex_block_mask(40, 40, device="cpu", q_segments=seg).to_dense(), both.to_dense())


def test_flex_refuses_what_it_cannot_compile():
    q, k, v = qkv(1, 2, 2, 8, 8, 4)
    table = lambda qp, kp, qf=None, kf=None: torch.zeros(2, len(qp), len(kp))  # noqa: E731
    with pytest.raises(ValueError, match="elementwise score bias"):
        attend(q, k, v, score_bias=table, backend="flex")
    with pytest.raises(ValueError, match="no attention dropout"):
        attend(q, k, v, backend="flex", dropout_p=0.1)
    with pytest.raises(ValueError, match="one feature per token"):
        f = torch.zeros(1, 2, 8, 3)
        flex_attention_path(q, k, v, score_bias=ALiBi(2).elementwise_score_bias(), q_features=f, k_features=f)


def test_flex_backward_is_unavailable_on_cpu():
    """Why CPU training never takes flex: FlexAttention in this torch has no CPU backward.
    If this starts to pass, the dispatcher can send CPU training to flex too."""
    q, k, v = (t.requires_grad_() for t in qkv(2, 4, 2, 24, 40, 16))
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        y = flex_attention_path(q, k, v, score_bias=ALiBi(4).elementwise_score_bias(), compiled=False)
        y.sum().backward()


# ----------------------------------------------------------------------------- gradients


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """FlexAttention's backward on CPU, for checking only: its device check lifted (torch 2.13 has
    no CPU backward kernel, but its reference backward runs anywhere), compiled through AOT autograd
    with a backward "compiler" that runs the rule the CUDA compiler applies to the backward graph
    (``validate_joint_graph``: no second index of a tensor that needs a gradient, among others) and
    then runs the graph as it is. Returns the list of backward graphs it validated."""
    import functools

    import torch.nn.attention.flex_attention as fa
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.kernel.flex.flex_attention import validate_joint_graph

    from posenc.attention import flex

    validated = []

    def backward(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and "flex_attention_backward" in str(node.target):
                joint = [a for a in node.args if getattr(a, "op", None) == "get_attr"][1]
                validate_joint_graph(getattr(gm, joint.target).graph)  # raises what CUDA would
                validated.append(joint.target)
        return gm

    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=backward)
    monkeypatch.setattr(fa, "_validate_device", lambda q, k, v: None)
    monkeypatch.setattr(
        flex, "_compiled_flex_attention", functools.cache(lambda: torch.compile(fa.flex_attention, backend=backend))
    )
    torch._dynamo.reset()
    yield validated
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", NAMES)
def test_the_backward_graph_compiles_and_the_gradients_match(flex_backward_on_cpu, name):
    """Through FlexAttention's backward (its reference implementation), the gradients of q, k, v,
    the encoding's parameters, FoX's gate (through its features, one tensor for queries and keys
    as attention passes them without a cache) and the sinks equal the blockwise kernel's; and the
    backward graph passes the check FlexAttention's CUDA compiler makes before it builds the kernel
    (FIRE's unrolled MLP and FoX's shared features failed it)."""
    enc = make_encoding(name, 2)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 32, 16, generator=g, requires_grad=True) for _ in range(3))
    sinks = torch.tensor([0.5, -1.0], requires_grad=True)
    x = torch.randn(1, 32, 8, generator=g)
    params = [p for p in enc.parameters() if p.requires_grad]
    upstream = torch.randn(1, 2, 32, 16, generator=g)
    results = []
    for path in ("flex", "blockwise"):
        f = enc.token_features(x) if name == "fox" else None
        bias = enc.elementwise_score_bias() if path == "flex" else enc.score_bias
        fn = partial(flex_attention_path, compiled=True) if path == "flex" else blockwise_attention
        y = fn(q, k, v, score_bias=bias, q_features=f, k_features=f, sinks=sinks, window=20)
        results.append((y, torch.autograd.grad(y, [q, k, v, sinks, *params], upstream)))
    assert flex_backward_on_cpu, "no FlexAttention backward graph was validated"
    (y, grads), (y_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, **TOL)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the compiled kernel


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", [None, *NAMES])
def test_compiled_flex_matches_blockwise_on_cpu(name):
    """The compiled kernel (inductor's C++ template on CPU; Triton on CUDA lowers the same score_mod
    graph) for every elementwise encoding, with a window and GQA. Generic per-head biases
    (``score_bias(...)[h]``) miscompile or fail to lower here (benchmarks/repro_flex_cpu.py): the
    elementwise form is what makes this exact. No sinks: they need the rows' log-sum-exp, which
    this torch's compiled CPU kernel does not return (its CUDA kernel does). Lengths a multiple of
    the 128-token block."""
    q, k, v = qkv(1, 4, 2, 128, 128, 16, seed=8)
    assert_flex_matches_blockwise(make_encoding(name, 4), q, k, v, compiled=True, window=40)
    assert flex_block_mask(128, 128, device="cpu", window=40) is flex_block_mask(128, 128, device="cpu", window=40)


# ----------------------------------------------------------------------------- dispatch


def record_gpu_check(monkeypatch, path, cases: list[dict] | None) -> None:
    """Point the library at a GPU check's record holding ``cases`` (None: no record committed)."""
    if cases is not None:
        path.write_text(json.dumps({"device": "a GPU", "torch": "2.x", "cases": cases}))
    monkeypatch.setattr(gpu_checks, "RECORD", path)


def test_cuda_takes_flex_only_for_what_a_gpu_check_passed(monkeypatch, tmp_path):
    """Where compiled FlexAttention serves (CUDA with Triton; faked here), ``auto`` takes it for no
    case until a GPU check is recorded, then for exactly the cases it passed: the same encoding, mask
    options, head widths and dtype, with gradients only where the check ran them. Decoding steps,
    dropout, biases without an elementwise form (or the caller's own) and non-softmax weights never."""
    from posenc.encodings.base import Weighting

    q, k, _ = qkv(1, 2, 2, 16, 16, 16)
    alibi, t5 = ALiBi(2), T5RelativeBias(2)
    seg = torch.zeros(1, 16, dtype=torch.long)
    both = dict(score_bias=alibi.score_bias, elementwise_score_bias=alibi.elementwise_score_bias)
    t5_both = dict(score_bias=t5.score_bias, elementwise_score_bias=t5.elementwise_score_bias)
    cases = [
        dict(learned_bias=False, **both),
        dict(window=4),
        dict(chunk=4),
        dict(q_segments=seg, k_segments=seg),
        dict(softcap=30.0),
        dict(sinks=torch.zeros(2)),
    ]
    monkeypatch.setattr(kernel, "flex_compiles", lambda q: True)
    record_gpu_check(monkeypatch, tmp_path / "none.json", None)  # before any GPU check
    assert [choose_backend(q, k, **kw) for kw in cases] == ["dense"] * 4 + ["blockwise", "dense"]
    with torch.no_grad():
        assert choose_backend(q, k, **t5_both) == "dense"

    rows = [
        {"key": "ALiBi hs16 float32", "ok": True, "backward": True},
        {"key": "no bias window hs16 float32", "ok": True, "backward": True},
        {"key": "no bias chunk hs16 float32", "ok": False, "backward": True},  # failed: not taken
        {"key": "no bias documents hs16 float32", "ok": True, "backward": True},
        {"key": "T5RelativeBias hs16 float32", "ok": True, "backward": False},  # forward checked only
        {"key": None, "ok": True, "backward": True},  # a caller's own bias: informs nothing
    ]
    record_gpu_check(monkeypatch, tmp_path / "check.json", rows)
    assert [choose_backend(q, k, **kw) for kw in cases] == ["flex", "flex", "dense", "flex", "blockwise", "dense"]
    assert choose_backend(q, k, window=4, chunk=4) == "dense"  # a combination not checked
    assert choose_backend(q, k, window=4, **both) == "dense"
    assert choose_backend(q.double(), k.double(), window=4) == "dense"  # another dtype
    assert choose_backend(q[..., :8], k[..., :8], window=4) == "dense"  # heads narrower than 16
    q32, k32 = torch.cat([q, q], -1), torch.cat([k, k], -1)
    assert choose_backend(q32, k32, window=4) == "dense"  # another head width than the check's
    assert choose_backend(q, k, window=4, value_dim=8) == "dense"
    assert choose_backend(q, k, window=4, dropout_p=0.1) == "dense"
    assert choose_backend(q, k, learned_bias=True, window=4) == "flex"  # the flag concerns the bias only
    assert choose_backend(q, k, **t5_both) == "dense"  # T5 trains off flex: the check ran no backward
    with torch.no_grad():
        assert choose_backend(q, k, **t5_both) == "flex"
    own = dict(score_bias=alibi.score_bias, elementwise_score_bias=lambda: alibi.elementwise_score_bias())
    assert choose_backend(q, k, learned_bias=False, **own) == "dense"
    assert choose_backend(q, k, score_bias=alibi.score_bias) == "dense"  # no elementwise form given
    assert choose_backend(q[:, :, -1:], k, **both) == "dense"  # a decoding step
    assert choose_backend(q, k, weighting=Weighting("stickbreaking")) == "blockwise"
    monkeypatch.setattr(kernel, "flex_compiles", lambda q: False)  # CPU: the record changes nothing
    assert choose_backend(q, k, window=4) == "dense"


def test_flex_case_names_what_shapes_the_call():
    q, k, _ = qkv(2, 4, 2, 8, 24, 16)
    fire = FIRE(4)
    key = kernel.flex_case(q, k, elementwise_score_bias=fire.elementwise_score_bias, window=4, sinks=torch.zeros(4))
    assert key == "FIRE window sinks gqa cache hs16 float32"
    assert kernel.flex_case(q[:, :2], k, value_dim=32, softcap=5.0) == "no bias softcap cache hs16/32 float32"


@pytest.mark.parametrize(
    "pe, window, attention, learned",
    [
        ("alibi", 6, {}, False),
        ("fox", None, {"sinks": True}, True),
        ("rope", 5, {"softcap": 20.0, "sinks": True}, False),
    ],
    ids=["alibi-window", "fox-sinks", "rope-window-softcap-sinks"],
)
def test_a_model_on_the_cuda_rule_gives_the_same_logits(monkeypatch, pe, window, attention, learned):
    """A GPT whose layers take flex under ``auto`` (the CUDA rule and a GPU check that passed every
    case's forward, both faked on CPU, where flex runs unfused) gives the logits of the CPU paths.
    With gradients on, a learned bias (FoX's gates) keeps its layers off flex (no gradients into a
    bias were checked); ALiBi's fixed slopes, windows, softcaps and sinks do not."""
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny", pe=pe, sliding_window=window)
    config = config.map_layers(lambda i, layer: layer.replace(attention=layer.attention.replace(**attention)))
    model = GPT(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            if block.attn.sinks is not None:
                block.attn.sinks.normal_(std=2.0)
    idx = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        want = model(idx)[0]
    monkeypatch.setattr(kernel, "flex_compiles", lambda q: True)
    # a GPU check passed every case's forward, none's gradients into a bias
    monkeypatch.setattr(kernel, "checked", lambda key, backward: not backward)
    calls = []
    real = kernel.flex_attention_path
    monkeypatch.setattr(kernel, "flex_attention_path", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with torch.no_grad():
        got = model(idx)[0]
    assert len(calls) == model.config.n_layer
    torch.testing.assert_close(got, want, **TOL)
    calls.clear()
    if learned:  # a forward that will take gradients: blockwise/dense, as on CPU
        model(idx)[0].sum().backward()
        assert calls == []
    else:  # flex with gradients runs on CUDA only: the path is chosen, then refused by this CPU
        with pytest.raises(NotImplementedError, match="backward on CPU"):
            model(idx)
        assert calls
