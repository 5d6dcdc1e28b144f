"""Attention cost per positional encoding, and how time and memory grow with sequence length.

    python benchmarks/bench_attention.py            # T in {256, 1024, 4096}
    python benchmarks/bench_attention.py --quick    # T in {256, 1024}
    python benchmarks/bench_attention.py --device cuda

Part 1, encodings: the attention layer (``CausalSelfAttention``: c_attn, QK-norm, rotation, SDPA,
c_proj) exactly as ``GPT`` builds it for every layer code of every variant in ``posenc.VARIANTS``,
plus sliding-window RNoPE (``layer_pattern="rrrN"``), with SDPA's default backend.
Part 2, kernels: the attention core on q, k, v for three masks (causal; causal + sliding window;
causal + ALiBi bias) under SDPA's default backend, SDPA's math backend, a naive
softmax(QK^T / sqrt(hs) + mask) V written out here and, on CUDA, compiled FlexAttention (the
window as a block mask, ALiBi computed in the kernel). On CUDA the layers of part 1 with a score
bias, window or sinks take FlexAttention too (``auto``'s rule, docs/attention.md).

Forward is run under ``torch.no_grad()`` (inference); fwd+bwd is forward plus backward from a
fixed upstream gradient. Peak memory: see ``common.peak_memory_bytes`` (CUDA: allocated tensors;
CPU: peak resident set above the baseline, page-granular).
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from posenc import VARIANTS, GPTConfig  # noqa: E402
from posenc.attention import causal_attention  # noqa: E402
from posenc.attention.flex import flex_attention_path  # noqa: E402
from posenc.encodings.alibi import ALiBi  # noqa: E402


def attention_paths(n_head: int, n_embd: int, block_size: int, window: int) -> dict[str, torch.nn.Module]:
    """label -> the attention module ``GPT`` builds for that layer; one per distinct layer code."""
    configs = {
        name: GPTConfig(n_layer=4, n_head=n_head, n_embd=n_embd, block_size=block_size, pe=name, bias=False)
        for name in VARIANTS
        if name != "rnope_swa"  # below, with this benchmark's window
    }
    configs["rnope-swa"] = GPTConfig(
        n_layer=4,
        n_head=n_head,
        n_embd=n_embd,
        block_size=block_size,
        layer_pattern="rrrN",
        sliding_window=window,
        bias=False,
    )
    paths = {}
    for name, config in configs.items():
        for code, spec in dict(zip(config.layer_codes, config.layers)).items():
            paths[f"{name} [{code}]"] = spec.build(config.dims, config.dropout).attn
    return paths


def naive_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, window: int | None) -> Tensor:
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    i = torch.arange(T, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed = allowed & (i[:, None] - i[None, :] < window)
    if bias is not None:
        att = att + bias
    att = att.masked_fill(~allowed, float("-inf"))
    return F.softmax(att, dim=-1) @ v  # (B, nh, T, hs)


def backend_context(backend: str):
    if backend == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def measure(calls: dict, *, backward: bool, make_inputs, repeats: int, device, amp):
    """Interleaved times and a separate peak-memory run for each call(inputs...)."""
    grad_ctx = contextlib.nullcontext if backward else torch.no_grad
    inputs = make_inputs(backward)

    def run(f):
        with grad_ctx(), amp():
            out = f(*inputs)
        if backward:
            out.backward(torch.ones_like(out))

    wrapped = {name: (lambda f=f: run(f)) for name, f in calls.items()}

    def clear():
        for t in inputs:
            t.grad = None

    times = common.time_interleaved(wrapped, repeats=repeats, warmup=1, device=device, before=clear)
    memory = {}
    for name, f in wrapped.items():
        clear()
        memory[name] = common.peak_memory_bytes(f, device)
    return times, memory


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser("bench_attention", __doc__.splitlines()[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256, help="owt-16m's width: 4 heads of 64")
    p.add_argument("--window", type=int, default=256, help="sliding window of the rnope-swa variant")
    args = p.parse_args(argv)
    device = common.setup(args)
    if args.smoke:
        seq_lens, B, nh, C, window = args.seq_lens or [16, 32], 1, 2, 16, 8
    else:
        seq_lens, B, nh, C, window = (
            args.seq_lens or ([256, 1024] if args.quick else [256, 1024, 4096]),
            args.batch,
            args.n_head,
            args.n_embd,
            args.window,
        )
    repeats = args.repeats or (1 if args.smoke else 3 if args.quick else 5)
    hs = C // nh
    cuda = device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else contextlib.nullcontext
    dtype = "fp16 autocast" if cuda else "fp32"

    results, rows1, rows2 = [], [], []
    paths = {name: m.to(device) for name, m in attention_paths(nh, C, max(seq_lens), window).items()}
    for T in seq_lens:
        reps = repeats if T < 4096 or args.repeats else min(repeats, 3)  # the T x T rows take seconds on CPU
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"

            def make_x(bw):
                return (torch.randn(B, T, C, device=device, requires_grad=bw),)  # noqa: B023 -- called in this iteration

            times, memory = measure(
                dict(paths),
                backward=backward,
                make_inputs=make_x,
                repeats=reps,
                device=device,
                amp=amp,
            )
            for name, ts in times.items():
                s = common.stats(ts)
                results.append(
                    {"part": "encodings", "path": name, "T": T, "mode": mode, **s, "peak_bytes": memory[name]}
                )
                rows1.append([name, T, mode, s["median_ms"], common.mib(memory[name])])

            def make_qkv(bw):
                return tuple(torch.randn(B, nh, T, hs, device=device, requires_grad=bw) for _ in range(3))  # noqa: B023

            alibi = ALiBi(nh).to(device)
            pos = torch.arange(T, device=device)
            bias = alibi.score_bias(pos, pos)  # (nh, T, T), built once as the layer does per call
            masks = {"causal": (None, None), f"window {window}": (None, window), "alibi bias": (bias, None)}
            calls = {}
            for mask_name, (b, w) in masks.items():
                for backend in ("default", "math"):
                    calls[(mask_name, f"sdpa {backend}")] = lambda q, k, v, b=b, w=w, backend=backend: _with(
                        backend, causal_attention, q, k, v, bias=b, window=w
                    )
                calls[(mask_name, "naive")] = lambda q, k, v, b=b, w=w: naive_attention(q, k, v, b, w)
                if cuda:  # compiled FlexAttention, the bias computed in its kernel (no CPU backward)
                    at = alibi.elementwise_score_bias() if b is not None else None
                    calls[(mask_name, "flex")] = lambda q, k, v, at=at, w=w: flex_attention_path(
                        q, k, v, score_bias=at, window=w
                    )
            labelled = {f"{m} / {impl}": f for (m, impl), f in calls.items()}
            times, memory = measure(
                labelled, backward=backward, make_inputs=make_qkv, repeats=reps, device=device, amp=amp
            )
            for m, impl in calls:
                label = f"{m} / {impl}"
                s = common.stats(times[label])
                results.append(
                    {"part": "kernels", "mask": m, "impl": impl, "T": T, "mode": mode, **s, "peak_bytes": memory[label]}
                )
                rows2.append([m, impl, T, mode, s["median_ms"], common.mib(memory[label])])
            print(f"done T={T} {mode}", file=sys.stderr, flush=True)

    head = f"(B={B}, nh={nh}, hs={hs}, {dtype}, {device}, {repeats} interleaved repeats)"
    print(f"\n## Attention layer per encoding {head}\n")
    print(common.markdown_table(["path [layer code]", "T", "mode", "median ms", "peak MiB"], rows1))
    print(f"\n## Attention core per mask and kernel {head}\n")
    print(common.markdown_table(["mask", "kernel", "T", "mode", "median ms", "peak MiB"], rows2))
    growth = memory_growth(results)
    print("\n## Peak memory growth between the two longest T (fwd+bwd)\n")
    print(common.markdown_table(["row", "T", "memory ratio", "growth"], growth))
    payload = {
        "benchmark": "bench_attention",
        "machine": common.machine_info(device),
        "argv": sys.argv[1:] if argv is None else argv,
        "dtype": dtype,
        "shape": {"B": B, "nh": nh, "hs": hs, "C": C, "window": window, "T": seq_lens},
        "repeats": repeats,
        "results": results,
        "memory_growth": growth,
    }
    common.write_json(args.out, payload)
    return payload


def _with(backend: str, fn, *args, **kwargs):
    with backend_context(backend):
        return fn(*args, **kwargs)


def memory_growth(results: list[dict]) -> list[list]:
    """Peak-memory ratio between the two longest T, fwd+bwd, per row, and the exponent p of
    memory ~ T^p it implies (fixed overheads dominate at short T, so the short end is left out)."""
    out = []
    keyed: dict[str, dict[int, int | None]] = {}
    for r in results:
        if r["mode"] != "fwd+bwd":
            continue
        label = r["path"] if r["part"] == "encodings" else f"{r['mask']} / {r['impl']}"
        keyed.setdefault(label, {})[r["T"]] = r["peak_bytes"]
    for label, by_t in keyed.items():
        if len(by_t) < 2:
            continue
        lo, hi = sorted(by_t)[-2:]
        if not by_t[lo] or not by_t[hi]:
            continue
        t_ratio, m_ratio = hi / lo, by_t[hi] / by_t[lo]
        # no linear/quadratic label: CPU peaks are page-granular RSS with fixed overheads, which
        # pull the exponent down at short T; read it beside the MiB columns
        out.append([label, f"{lo} -> {hi}", m_ratio, f"T^{math.log(m_ratio) / math.log(t_ratio):.2f}"])
    return out


if __name__ == "__main__":
    main()
