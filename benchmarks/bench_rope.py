"""RoPE on q and k of shape (B, nh, T, hs): posenc beside the formulations people use, and the
physical floor (a plain copy of the same bytes).

    python benchmarks/bench_rope.py            # full run (CPU: about 3 minutes on 2 cores)
    python benchmarks/bench_rope.py --quick    # short run
    python benchmarks/bench_rope.py --device cuda

Candidates (all on the same q, k; tables built once, outside the timed call, as a model does):
- ``copy floor``: q.clone(), k.clone() -- read q, k once, write two outputs; for fwd+bwd the same
  clone plus its backward, which copies the upstream gradient into q.grad, k.grad.
- ``posenc``: ``RotaryEmbedding(hs)(q, k)`` (half layout), and ``posenc interleaved``.
- ``rotate-half formula``: ``q * cos + rotate_half(q) * sin`` written out here -- the Hugging Face
  formula, and exactly posenc's formula before its hand-written kernel.
- ``complex multiply``: Meta Llama's ``view_as_complex(x.float()) * freqs_cis`` (interleaved pairs).
- ``transformers``: ``transformers.models.llama.modeling_llama.apply_rotary_pos_emb`` (installed).
- ``rotary-embedding-torch``: ``rotary_embedding_torch.apply_rotary_emb`` (installed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from posenc import RotaryEmbedding  # noqa: E402
from posenc.encodings.rope import rope_cos_sin, rope_inv_freq  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate_half_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """The Hugging Face / GPT-NeoX formula; cos, sin (T, hs) already in q's dtype."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def complex_rope(q: Tensor, k: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor]:
    """Meta Llama's ``apply_rotary_emb``: pairs (2i, 2i+1) as complex numbers, in float32."""
    q_ = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
    k_ = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    q_out = torch.view_as_real(q_ * freqs_cis).flatten(-2)
    k_out = torch.view_as_real(k_ * freqs_cis).flatten(-2)
    return q_out.type_as(q), k_out.type_as(k)


def candidates(B: int, nh: int, T: int, hs: int, dtype: torch.dtype, device: torch.device) -> dict[str, Callable]:
    """name -> f(q, k) returning the rotated (q, k)."""
    rope = RotaryEmbedding(hs, cache_len=T).to(device)
    rope_il = RotaryEmbedding(hs, layout="interleaved", cache_len=T).to(device)
    inv_freq = rope_inv_freq(hs, 10000.0, device)
    cos, sin = (t.to(dtype) for t in rope_cos_sin(torch.arange(T, device=device), inv_freq, "half"))  # (T, hs)
    angles = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq  # (T, hs/2)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)  # (T, hs/2) complex64
    out: dict[str, Callable] = {
        "copy floor": lambda q, k: (q.clone(), k.clone()),
        "posenc": lambda q, k: rope(q, k),
        "posenc interleaved": lambda q, k: rope_il(q, k),
        "rotate-half formula": lambda q, k: rotate_half_rope(q, k, cos, sin),
        "complex multiply": lambda q, k: complex_rope(q, k, freqs_cis),
    }
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except ImportError:
        pass
    else:
        cos_hf, sin_hf = cos[None], sin[None]  # (1, T, hs): LlamaRotaryEmbedding's output, in q's dtype
        out["transformers"] = lambda q, k: apply_rotary_pos_emb(q, k, cos_hf, sin_hf, unsqueeze_dim=1)
    try:
        from rotary_embedding_torch import apply_rotary_emb
    except ImportError:
        pass
    else:
        freqs = torch.repeat_interleave(angles, 2, dim=-1)  # (T, hs): the library's interleaved angles
        out["rotary-embedding-torch"] = lambda q, k: (apply_rotary_emb(freqs, q), apply_rotary_emb(freqs, k))
    return out


def run_setting(fns, q, k, *, backward: bool, repeats: int, device, inner: int = 1):
    """Time every f(q, k) (forward, or forward + backward from fixed upstream gradients)."""
    if backward:
        q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
        gq, gk = torch.randn_like(q), torch.randn_like(k)

        def clear() -> None:
            q.grad = k.grad = None

        calls = {name: (lambda f=f: torch.autograd.backward(f(q, k), (gq, gk))) for name, f in fns.items()}
        return common.time_interleaved(calls, repeats=repeats, warmup=2, device=device, before=clear, inner=inner)
    calls = {name: (lambda f=f: f(q, k)) for name, f in fns.items()}
    return common.time_interleaved(calls, repeats=repeats, warmup=2, device=device, inner=inner)


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser("bench_rope", __doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=4, metavar=("B", "nh", "T", "hs"), default=None)
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = p.parse_args(argv)
    device = common.setup(args)
    B, nh, T, hs = args.shape or ((1, 2, 16, 8) if args.smoke else (8, 12, 1024, 64))
    repeats = args.repeats or (1 if args.smoke else 7 if args.quick else 15)
    dtypes = args.dtypes or (["fp32"] if args.smoke else ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else []))
    compile_ = not (args.no_compile or args.smoke)

    results, rows = [], []
    for dname in dtypes:
        dtype = DTYPES[dname]
        q = torch.randn(B, nh, T, hs, device=device, dtype=dtype)
        k = torch.randn(B, nh, T, hs, device=device, dtype=dtype)
        eager = candidates(B, nh, T, hs, dtype, device)
        compiled: dict[str, Callable] = {}
        if compile_:
            torch._dynamo.reset()
            names = ["posenc"] if args.quick else ["posenc", "rotate-half formula"]
            names = names if not args.quick or dname == "fp32" else []
            compiled = {f"{n} (compiled)": torch.compile(eager[n], dynamic=False) for n in names}
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            fns = dict(eager)
            warm_s = {}
            for name, f in compiled.items():  # compile outside the timed loop, and report how long it took
                qq = q.detach().requires_grad_(backward)
                t0 = time.perf_counter()
                out = f(qq, k.detach().requires_grad_(backward))
                if backward:
                    torch.autograd.backward(out, (torch.ones_like(q), torch.ones_like(k)))
                common.sync(device)
                warm_s[name] = time.perf_counter() - t0
                fns[name] = f
            times = run_setting(
                fns, q, k, backward=backward, repeats=repeats, device=device, inner=10 if device.type == "cuda" else 1
            )
            n_bytes = (8 if backward else 4) * q.numel() * q.element_size()  # read q, k + write 2; twice for bwd
            floor = common.stats(times["copy floor"])["median_ms"]
            ours = common.stats(times["posenc"])["median_ms"]
            for name, ts in times.items():
                s = common.stats(ts)
                row = {
                    "dtype": dname,
                    "mode": mode,
                    "candidate": name,
                    **s,
                    "GB_s": n_bytes / (s["median_ms"] * 1e-3) / 1e9,
                    "x_copy_floor": s["median_ms"] / floor,
                    "posenc_speedup": s["median_ms"] / ours,
                    "compile_warmup_s": warm_s.get(name),
                }
                results.append(row)
                rows.append(
                    [
                        dname,
                        mode,
                        name,
                        s["median_ms"],
                        s["min_ms"],
                        s["max_ms"],
                        row["GB_s"],
                        row["x_copy_floor"],
                        row["posenc_speedup"],
                    ]
                )
            print(f"done {dname} {mode}", file=sys.stderr, flush=True)

    table = common.markdown_table(
        [
            "dtype",
            "mode",
            "candidate",
            "median ms",
            "min ms",
            "max ms",
            "GB/s",
            "x copy floor",
            "its time / posenc eager",
        ],
        rows,
    )
    print(f"\nRoPE on q, k of shape (B={B}, nh={nh}, T={T}, hs={hs}), {device}, {repeats} interleaved repeats\n")
    print(table)
    bars = bar_check(results)
    for line in bars:
        print(line)
    payload = {
        "benchmark": "bench_rope",
        "machine": common.machine_info(device),
        "argv": sys.argv[1:] if argv is None else argv,
        "shape": {"B": B, "nh": nh, "T": T, "hs": hs},
        "repeats": repeats,
        "results": results,
        "bars": bars,
    }
    common.write_json(args.out, payload)
    return payload


def bar_check(results: list[dict]) -> list[str]:
    """The performance bars of docs/benchmarks.md, from this run's medians (fp32, fwd+bwd)."""
    r = {(x["dtype"], x["mode"], x["candidate"]): x for x in results}
    out = []
    ours = r.get(("fp32", "fwd+bwd", "posenc"))
    if ours is None:
        return out
    hf = r.get(("fp32", "fwd+bwd", "transformers")) or r.get(("fp32", "fwd+bwd", "rotate-half formula"))
    if hf is not None:
        ratio = hf["median_ms"] / ours["median_ms"]
        out.append(
            f"bar: posenc eager fwd+bwd fp32 is {common.speed(ratio, hf['candidate'])} (need >= 3x faster): "
            f"{'PASS' if ratio >= 3 else 'MISS'}"
        )
    floor_bars = (("posenc", "half layout", 2.0), ("posenc interleaved", "interleaved layout", 1.3))
    for name, what, bar in floor_bars:
        row = r.get(("fp32", "fwd+bwd", name))
        if row is not None:
            x = row["x_copy_floor"]
            out.append(
                f"bar: posenc eager fwd+bwd fp32, {what} = {x:.2f}x copy floor (need <= {bar}): "
                f"{'PASS' if x <= bar else 'MISS'}"
            )
    comp = r.get(("fp32", "fwd+bwd", "posenc (compiled)"))
    if comp is not None:
        x = comp["x_copy_floor"]
        out.append(
            f"bar: posenc compiled fwd+bwd fp32 = {x:.2f}x copy floor (need <= 1.2): {'PASS' if x <= 1.2 else 'MISS'}"
        )
    return out


if __name__ == "__main__":
    main()
