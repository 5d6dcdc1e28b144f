"""FlexAttention where ``auto`` takes it (CUDA with Triton): the layers' values and gradients against
the blockwise kernel, then their time and memory beside the blockwise and dense paths and the RoPE
layer on SDPA's fused causal kernel.

    python benchmarks/check_flex.py --device cuda                 # T=1024 checks; timed T in {4096, 16384}
    python benchmarks/check_flex.py --device cuda --seq-lens 2048
    python benchmarks/check_flex.py --device cuda --record        # and write the record auto reads
    python benchmarks/check_flex.py --smoke                       # CPU: forward checks only, tiny sizes

Check, per case: one attention layer as ``GPT`` builds it (projections, QK-norm, rotation, FoX's
gates, sinks) with its attention config forcing ``flex``, its weights copied to a second layer
forcing ``blockwise``; the table also says which path ``auto`` takes on this device;
float32, forward + backward from a fixed upstream gradient; the largest difference of the outputs,
of the input's gradient and of every parameter's gradient, relative to the largest value of each
(bar: 1e-3). This is what the test suite cannot check: this torch has no FlexAttention backward on
CPU, and its CPU kernel is not the Triton one. On CPU (``--smoke``) the flex layer runs
FlexAttention's unfused implementation, forward only.

The Triton RoPE kernel: ``apply_rotary`` on it (``TRITON_ROTARY = True``) against the formula,
values and gradients, half and interleaved layouts, partial rotary, shared and per-row tables, per
dtype (on CPU the formula's eager path, which is what runs there).

``--record`` (CUDA only) writes what passed to ``posenc/gpu_checks.json`` (:mod:`posenc.gpu_checks`):
the device, the torch, CUDA and Triton versions, the command, and every case with its key, the
name under which ``auto`` looks the case up. Committed, it is what ``auto`` on CUDA sends to
FlexAttention and to the Triton kernel: exactly the passing cases, nothing else.

Time and memory: fp16 autocast (fp32 on CPU), forward + backward, median of interleaved repeats;
peak memory is the CUDA allocator's peak above the inputs (``common.peak_memory_bytes``). The
script exits with status 1 when a check fails; every case runs whatever the others do.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from posenc import GPTConfig, gpu_checks  # noqa: E402
from posenc.attention import dense  # noqa: E402
from posenc.attention.kernel import choose_backend, flex_case, flex_compiles  # noqa: E402
from posenc.attention.scores import ScoreInputs  # noqa: E402
from posenc.encodings import rotation  # noqa: E402

#: name -> (encoding, the layer's attention options, sliding window)
CASES = {
    "alibi": ("alibi", {}, None),
    "kerple": ("kerple", {}, None),
    "t5": ("t5", {}, None),
    "fire": ("fire", {}, None),
    "fox": ("fox", {}, None),
    "fox+rope": ("fox_rope", {}, None),
    "rope window 256": ("rope", {}, 256),
    "rope sinks softcap": ("rope", {"sinks": True, "softcap": 30.0}, None),
    "alibi window 256 sinks": ("alibi", {"sinks": True}, 256),
}
TIMED = ("alibi", "fire", "rope window 256")
BAR = 1e-3
#: the layer cases run again under bf16 and fp16 autocast (bar BF16_BAR: half-precision inputs,
#: float32 scores in both)
BF16 = ("alibi", "fire", "fox")
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_BAR = 3e-2


def build(pe: str, attention: dict, window: int | None, *, n_head: int, n_embd: int, T: int, backend: str):
    """The case's attention layer; a window longer than a quarter of T (``--smoke``) shrinks to it."""
    window = None if window is None else min(window, max(8, T // 4))
    config = GPTConfig(n_layer=1, n_head=n_head, n_embd=n_embd, block_size=T, pe=pe, sliding_window=window)
    config = config.map_layers(
        lambda i, layer: layer.replace(attention=layer.attention.replace(backend=backend, **attention))
    )
    return config.build_layers()[0].attn


def pair(name: str, *, n_head: int, n_embd: int, T: int, device: torch.device, backend: str):
    """(the layer on ``backend``, the same weights on ``blockwise``); sinks and FoX's gates moved off
    their small initial values so that they shape the attention."""
    pe, attention, window = CASES[name]
    torch.manual_seed(0)
    auto = build(pe, attention, window, n_head=n_head, n_embd=n_embd, T=T, backend=backend)
    with torch.no_grad():
        for pname, p in auto.named_parameters():
            if pname == "sinks" or "gate" in pname:
                p.normal_(std=1.0)
    ref = build(pe, attention, window, n_head=n_head, n_embd=n_embd, T=T, backend="blockwise")
    ref.load_state_dict(auto.state_dict())
    return auto.to(device), ref.to(device)


def layer_call(layer, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, ScoreInputs]:
    """q, k and the inputs this layer's whole-sequence training forward on inputs of ``dtype``
    passes the kernel's rule (what ``Attention.attend`` tells it)."""
    q = torch.empty(x.shape[0], layer.n_head, x.shape[1], layer.head_dim, device=x.device, dtype=dtype)
    k = torch.empty(x.shape[0], layer.n_kv_head, x.shape[1], layer.head_dim, device=x.device, dtype=dtype)
    pe = layer.pe
    bias = pe.where == "scores" and not pe.has_content_bias
    inputs = ScoreInputs(
        score_bias=pe.score_bias if bias else None,
        elementwise_score_bias=pe.elementwise_score_bias if bias and pe.elementwise_bias else None,
        mask=layer.mask,
        softcap=layer.config.softcap,
        sinks=layer.sinks,
        weighting=pe.weighting,
        learned_bias=bias and any(p.requires_grad for p in pe.parameters()),
    )
    return q, k, inputs


def path_taken(layer, x: torch.Tensor, dtype: torch.dtype) -> str:
    """What ``auto`` chooses for this layer's whole-sequence training forward on inputs of ``dtype``."""
    return choose_backend(*layer_call(layer, x, dtype))


def case_key(layer, x: torch.Tensor, dtype: torch.dtype) -> str | None:
    """The key the record files this layer's case under (``posenc.attention.kernel.flex_case``)."""
    q, k, inputs = layer_call(layer, x, dtype)
    if inputs.score_bias is None:
        inputs = inputs.replace(elementwise_score_bias=None)
    return flex_case(q, k, inputs)


def check(
    name: str, *, B: int, n_head: int, n_embd: int, T: int, device: torch.device, backward: bool, low: str | None = None
) -> dict:
    """The case's layer on flex against its blockwise twin; ``low``: under bf16 or fp16 autocast."""
    flex, ref = pair(name, n_head=n_head, n_embd=n_embd, T=T, device=device, backend="flex")
    dtype = torch.float32 if low is None else LOW_PRECISION[low]
    amp = contextlib.nullcontext() if low is None else torch.autocast(device.type, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(B, T, n_embd, device=device, generator=g)
    upstream = torch.randn(B, T, n_embd, device=device, generator=g)
    row = {"case": name + ("" if low is None else f" {low}"), "T": T, "path": path_taken(ref, x, dtype)}
    row |= {"key": case_key(ref, x, dtype), "backward": backward}
    outs, grads = [], []
    for layer in (flex, ref):
        xi = x.clone().requires_grad_(backward)
        with contextlib.nullcontext() if backward else torch.no_grad(), amp:
            y = layer(xi).float()
        outs.append(y.detach())
        if backward:
            y.backward(upstream)
            grads.append({"x": xi.grad, **{n: p.grad for n, p in layer.named_parameters() if p.grad is not None}})
    errors = {"out": rel_error(*outs)}
    if backward:
        assert grads[0].keys() == grads[1].keys(), (grads[0].keys(), grads[1].keys())
        errors |= {f"grad {n}": rel_error(grads[0][n], grads[1][n]) for n in grads[1]}
    return row | verdict(errors, BAR if low is None else BF16_BAR)


def verdict(errors: dict, bar: float) -> dict:
    worst = max(errors, key=errors.get)
    return {"errors": errors, "worst": worst, "max_error": errors[worst], "bar": bar, "ok": errors[worst] <= bar}


def check_kernel(*, device: torch.device, backward: bool) -> dict:
    """The kernel alone, at what the layer cases do not reach: GQA (4 query heads on 2), 40 cached
    keys before 88 queries, per-row positions, chunks of 48 counted per document, two documents in
    a row, left padding, ALiBi, FoX-like features that take a gradient, sinks; float32."""
    from posenc.attention.kernel import attend
    from posenc.attention.mask import Mask
    from posenc.encodings.alibi import ALiBi

    g = torch.Generator(device=device).manual_seed(2)
    B, Tq, Tk = 2, 88, 128
    q, k, v = (torch.randn(B, n, t, 16, device=device, generator=g) for n, t in ((4, Tq), (2, Tk), (2, Tk)))
    feats = torch.randn(B, 4, Tk, 1, device=device, generator=g).cumsum(2) * 0.1
    sinks = torch.randn(4, device=device, generator=g)
    pos = torch.stack([torch.arange(Tk), torch.arange(Tk) + 7]).to(device)
    seg = torch.zeros(B, Tk, dtype=torch.long, device=device)
    seg[1, 60:] = 1
    pad = torch.ones(B, Tk, dtype=torch.bool, device=device)
    pad[0, :9] = False
    alibi = ALiBi(4).to(device)
    fox_alibi = alibi.elementwise_score_bias()

    def bias(qp, kp, qf=None, kf=None):  # ALiBi plus the features' difference, tile by tile
        return alibi.score_bias(qp, kp) + qf - kf.transpose(-1, -2)

    def elementwise():
        return lambda h, qp, kp, qf, kf: fox_alibi(h, qp, kp) + qf - kf

    inputs = [t.requires_grad_(backward) for t in (q, k, v, feats, sinks)]
    shaping = ScoreInputs(
        score_bias=bias, elementwise_score_bias=elementwise, q_positions=pos[:, -Tq:], k_positions=pos,
        q_features=feats[:, :, -Tq:], k_features=feats, mask=Mask(chunk=48), q_segments=seg[:, -Tq:],
        k_segments=seg, key_padding_mask=pad, sinks=sinks,
    )  # fmt: skip
    outs, grads = [], []
    for backend in ("flex", "blockwise"):
        with contextlib.nullcontext() if backward else torch.no_grad():
            y = attend(q, k, v, shaping, backend=backend)
        outs.append(y.detach())
        if backward:
            grads.append(torch.autograd.grad(y, inputs, torch.ones_like(y)))
    errors = {"out": rel_error(*outs)}
    if backward:
        names = ("q", "k", "v", "features", "sinks")
        errors |= {f"grad {n}": rel_error(a, b) for n, a, b in zip(names, *grads, strict=True)}
    # the bias is this script's own function, not an encoding's: no key, informs no auto choice
    return {"case": "kernel: GQA, cache, chunks, documents, padding, features, sinks", "T": Tk,
            "path": "-", "key": None, "backward": backward} | verdict(errors, BAR)  # fmt: skip


def check_rotary(*, device: torch.device, dtype: torch.dtype) -> dict:
    """``apply_rotary`` on CUDA's Triton kernel (the formula's eager path on CPU) against the plain
    formula in float64: values and the input's gradient, over both layouts, full and partial rotary,
    shared (T, rd) and per-row (B, T, rd) tables; q as a strided view of a fused projection."""
    from posenc.encodings.rotation import apply_rotary, rope_cos_sin, rope_inv_freq

    g = torch.Generator(device=device).manual_seed(3)
    B, H, T, hs = 2, 4, 256, 64
    errors = {}
    switch, rotation.TRITON_ROTARY = rotation.TRITON_ROTARY, True
    try:
        for layout in ("half", "interleaved"):
            for rd in (hs, hs // 2):
                for per_row in (False, True):
                    pos = torch.arange(T, device=device) + (
                        torch.arange(B, device=device)[:, None] * 7 if per_row else 0
                    )
                    cos, sin = rope_cos_sin(pos, rope_inv_freq(rd, 10000.0, device), layout)
                    fused = torch.randn(B, T, 3 * H * hs, device=device, generator=g).to(dtype)
                    x = fused[..., : H * hs].unflatten(-1, (H, hs)).transpose(1, 2).requires_grad_(True)
                    up = torch.randn(B, H, T, hs, device=device, generator=g)
                    y = apply_rotary(x, cos, sin, layout)
                    (dx,) = torch.autograd.grad(y, x, up.to(dtype))
                    x64 = x.detach().double().requires_grad_(True)
                    y64 = rotation._rotary_reference(x64, cos.double()[:, None] if per_row else cos.double(),
                                                     sin.double()[:, None] if per_row else sin.double(), layout)  # fmt: skip
                    (dx64,) = torch.autograd.grad(y64, x64, up.double())
                    label = f"{layout} rd{rd}{' per-row' if per_row else ''}"
                    errors[f"out {label}"] = rel_error(y, y64)
                    errors[f"grad {label}"] = rel_error(dx, dx64)
    finally:
        rotation.TRITON_ROTARY = switch
    name = str(dtype).removeprefix("torch.")
    path = "triton" if device.type == "cuda" else "formula (CPU)"
    row = {"case": f"rotary {name}", "T": T, "path": path, "backward": True}
    key = rotation.rotary_case(torch.empty(0, dtype=dtype)) if device.type == "cuda" else None
    bar = BAR if dtype == torch.float32 else BF16_BAR
    return row | {"key": key} | verdict(errors, bar)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def timings(name: str, *, B: int, n_head: int, n_embd: int, T: int, device, repeats: int, amp) -> list[dict]:
    """fwd+bwd of the case's layer on ``flex``, ``blockwise`` and (while it fits) ``dense``, and the
    RoPE layer on SDPA's causal kernel, interleaved; ratios to the RoPE layer."""
    flex, blockwise = pair(name, n_head=n_head, n_embd=n_embd, T=T, device=device, backend="flex")
    # no FlexAttention backward on CPU: there (--smoke) the other paths alone
    layers = {"flex": flex, "blockwise": blockwise} if device.type == "cuda" else {"blockwise": blockwise}
    x = torch.randn(B, T, n_embd, device=device, requires_grad=True)
    q = torch.empty(B, n_head, T, 1, device=device)
    if dense.dense_fits(q, q):
        layers["dense"] = build(*CASES[name], n_head=n_head, n_embd=n_embd, T=T, backend="dense").to(device)
        layers["dense"].load_state_dict(flex.state_dict())
    layers["rope (sdpa)"] = build("rope", {}, None, n_head=n_head, n_embd=n_embd, T=T, backend="auto").to(device)

    def step(layer):
        with amp():
            y = layer(x)
        y.float().sum().backward()

    calls = {label: (lambda layer=layer: step(layer)) for label, layer in layers.items()}
    times = common.time_interleaved(calls, repeats=repeats, warmup=2, device=device, before=lambda: clear(x, layers))
    base = common.stats(times["rope (sdpa)"])["median_ms"]
    rows = []
    for label, f in calls.items():
        clear(x, layers)
        s = common.stats(times[label])
        peak = common.peak_memory_bytes(f, device)
        auto = path_taken(flex, x, torch.float16 if device.type == "cuda" else torch.float32)
        rows.append({"case": name, "T": T, "layer": label, "auto": auto, **s, "x_rope": s["median_ms"] / base})
        rows[-1]["peak_bytes"] = peak
    return rows


def clear(x, layers) -> None:
    x.grad = None
    for layer in layers.values():
        layer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser("check_flex", __doc__.splitlines()[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=None, help="timed lengths")
    p.add_argument("--check-len", type=int, default=None, help="length of the checks (default 1024)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256, help="owt-16m's width: 4 heads of 64")
    p.add_argument("--record", action="store_true", help="write what passed to posenc/gpu_checks.json (CUDA)")
    args = p.parse_args(argv)
    device = common.setup(args)
    cuda = device.type == "cuda"
    if args.record and (not cuda or args.smoke):
        p.error("--record writes what a GPU checked: it needs --device cuda and no --smoke")
    if args.smoke:
        B, nh, C, check_len, seq_lens = 1, 2, 32, args.check_len or 64, args.seq_lens or [64]
    else:
        B, nh, C = args.batch, args.n_head, args.n_embd
        check_len, seq_lens = args.check_len or 1024, args.seq_lens or [4096, 16384]
    repeats = args.repeats or (1 if args.smoke else 10)
    amp = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else contextlib.nullcontext
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # the checks compare float32 arithmetic
        torch.backends.cudnn.allow_tf32 = False
    # every case and length compiles its own FlexAttention kernel: more than torch's default 8
    torch._dynamo.config.recompile_limit = 64
    payload = {
        "benchmark": "check_flex",
        "machine": common.machine_info(device),
        "argv": sys.argv[1:] if argv is None else argv,
        "flex_compiles": flex_compiles(torch.empty(0, device=device)),
        "shape": {"B": B, "nh": nh, "C": C, "check_T": check_len, "T": seq_lens},
        "checks": [],
        "results": [],
    }
    failed = False
    runs = [(name, None) for name in CASES] + [(name, low) for low in LOW_PRECISION for name in BF16]
    runs += [("kernel", None)] + [("rotary", low) for low in (None, *LOW_PRECISION)]
    for name, low in runs:
        try:
            if name == "kernel":
                row = check_kernel(device=device, backward=cuda)
            elif name == "rotary":
                row = check_rotary(device=device, dtype=torch.float32 if low is None else LOW_PRECISION[low])
            else:
                shape = dict(B=B, n_head=nh, n_embd=C, T=check_len)
                row = check(name, **shape, device=device, backward=cuda, low=low)
        except Exception as e:  # report the case and go on: one failure must not hide the others
            label = name + ("" if low is None else f" {low}")
            row = {"case": label, "T": check_len, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
            traceback.print_exc()
        failed |= not row["ok"]
        payload["checks"].append(row)
        print(
            f"check {row['case']}: {row.get('path', '?')} {row.get('max_error', row.get('error'))}",
            file=sys.stderr,
            flush=True,
        )
        common.write_json(args.out, payload, quiet=True)
    for T in seq_lens:
        for name in TIMED if not args.smoke else TIMED[:1]:
            try:
                payload["results"] += timings(
                    name, B=B, n_head=nh, n_embd=C, T=T, device=device, repeats=repeats, amp=amp
                )
            except Exception as e:
                payload.setdefault("errors", []).append(f"{name} T={T}: {type(e).__name__}: {e}"[:2000])
                traceback.print_exc()
                failed = True
            common.write_json(args.out, payload, quiet=True)
    payload["bars"] = bars(payload["checks"])
    print(report(payload))
    common.write_json(args.out, payload)
    if args.record:
        write_record(payload, gpu_checks.RECORD)
    if failed:
        sys.exit(1)
    return payload


def write_record(payload: dict, path: Path) -> None:
    """The record ``auto`` reads (posenc.gpu_checks): the device, versions and every case's verdict."""
    import triton

    machine = payload["machine"]
    keep = ("case", "key", "T", "backward", "ok", "worst", "max_error", "bar", "error")
    record = {
        "check": "benchmarks/check_flex.py " + " ".join(payload["argv"]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": machine.get("gpu"),
        "torch": machine["torch"],
        "cuda": machine.get("cuda"),
        "triton": triton.__version__,
        "cases": [{k: c[k] for k in keep if k in c} for c in payload["checks"]],
    }
    common.write_json(path, record)


def bars(checks: list[dict]) -> list[str]:
    bad = [c["case"] for c in checks if not c["ok"]]
    worst = max((c.get("max_error", float("inf")) / c.get("bar", BAR) for c in checks), default=0.0)
    return [
        f"flex vs blockwise: {len(checks) - len(bad)}/{len(checks)} cases within their bars (float32 {BAR:g}, "
        f"bf16 {BF16_BAR:g}); worst at {worst:.2g}x its bar" + (f"; FAILED: {', '.join(bad)}" if bad else "")
    ]


def report(payload: dict) -> str:
    checks = [
        [
            c["case"],
            c["T"],
            c.get("path", "-"),
            "fwd+bwd" if c.get("backward") else "fwd",
            c.get("worst", "-"),
            c.get("max_error", c.get("error", "-")),
            "yes" if c["ok"] else "NO",
        ]
        for c in payload["checks"]
    ]
    timed = [
        [r["case"], r["T"], r["layer"], r["auto"], r["median_ms"], r["x_rope"], common.mib(r["peak_bytes"])]
        for r in payload["results"]
    ]
    machine = payload["machine"]
    where = f"{machine.get('gpu', machine['cpu'])}, torch {machine['torch']}"
    return "\n".join(
        [
            f"## FlexAttention against the blockwise kernel ({where})\n",
            common.markdown_table(["case", "T", "auto path", "checked", "worst", "relative error", "ok"], checks),
            "\n## Time and memory, fwd+bwd\n",
            common.markdown_table(
                ["case", "T", "path", "the case's auto path", "median ms", "x RoPE", "peak MiB"], timed
            ),
        ]
    )


if __name__ == "__main__":
    main()
