"""Memory and time of one causal attention computation per path, each case in a fresh process.

    python benchmarks/bench_blockwise.py                    # T in {1024, 4096}
    python benchmarks/bench_blockwise.py --lengths 1024 4096 16384
    python benchmarks/bench_blockwise.py --markdown         # also print the docs/attention.md table

One case = fp32 forward + backward of attention on q, k, v (B=1, 4 heads, head size 64) from a
fixed upstream gradient. Cases:

- ``sdpa``: ``scaled_dot_product_attention(is_causal=True)``, what a RoPE/NoPE layer runs
  (the rotation itself is not included): the baseline;
- ``alibi``, ``t5``, ``kerple``, ``fire``: :func:`posenc.attention.blockwise.blockwise_attention`
  with the encoding's ``score_bias``;
- ``window256``: blockwise with a 256-token sliding window and no bias;
- ``dense-alibi``: SDPA with the full (nh, T, T) ALiBi bias as ``attn_mask`` (what a dense path
  costs), run only up to ``--dense-max`` tokens;
- ``layer:<pe>``: a whole attention layer of ``GPTConfig(pe=<pe>)`` (n_embd 256, the same 4 heads
  of 64) on x (B=1, T, 256), projections included, as a user pays for it (and the only way to
  measure the content-dependent encodings, whose inputs are not q, k, v alone: FoX's gates read
  x); ``layer:rope_window256`` is the RoPE layer with a 256-token window. ``layer:rope`` (the SDPA
  path) is their baseline: ``--cases layer:rope layer:alibi layer:fire layer:rope_window256``.

Each case runs in its own ``python`` subprocess so that peak resident memory (``ru_maxrss``)
belongs to that case alone. Reported: peak RSS of the process, and the peak above the RSS
measured after imports and input allocation ("extra"). Every case imports ``torch._dynamo`` before
that baseline: the blockwise path's first ``torch.utils.checkpoint`` call imports it (~80 MiB, once
per process, already paid by any run that compiles), which is not the layer's memory. Time: the fastest of ``--repeats``
fwd+bwd runs after one warm-up (the least disturbed by other load on the machine), with one
intra-op thread unless ``--threads`` says otherwise.

The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc otherwise raises its mmap
threshold as large blocks are freed and keeps later freed tiles in the heap, so the peak RSS
would count memory that is no longer live. The baseline runs under the same setting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = ("sdpa", "alibi", "t5", "kerple", "fire", "window256", "dense-alibi")
LAYER_ENCODINGS = ("rope", "alibi", "kerple", "t5", "fire", "fox", "fox_rope", "cope", "stickbreaking", "rope_sinks")
LAYER_CASES = tuple(f"layer:{pe}" for pe in LAYER_ENCODINGS) + ("layer:rope_window256",)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(case: str, T: int, repeats: int, threads: int) -> dict:
    """One measurement, in this process (called in the child)."""
    import torch
    import torch._dynamo  # noqa: F401  what the first checkpoint imports (~80 MiB): once per process, not per layer
    import torch.nn.functional as F

    from posenc.attention.blockwise import blockwise_attention
    from posenc.encodings.alibi import ALiBi
    from posenc.encodings.fire import FIRE
    from posenc.encodings.kerple import KerpleLog
    from posenc.encodings.t5 import T5RelativeBias

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    B, nh, hs = 1, 4, 64
    q, k, v = (torch.randn(B, nh, T, hs, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, nh, T, hs)
    encodings = {"alibi": ALiBi, "t5": T5RelativeBias, "kerple": KerpleLog, "fire": FIRE}

    if case.startswith("layer:"):
        from posenc import GPTConfig

        pe, window = case.removeprefix("layer:").removesuffix("_window256"), case.endswith("_window256")
        sizes = dict(n_layer=1, n_head=nh, n_embd=nh * hs, block_size=T)
        config = GPTConfig(pe=pe, **sizes, **({"sliding_window": 256} if window else {}))
        layer = config.build_layers()[0].attn
        q = torch.randn(B, T, nh * hs, requires_grad=True)  # the layer's input, in q's place
        k = v = torch.zeros(0, requires_grad=True)
        grad = torch.randn(B, T, nh * hs)

        def step():
            return layer(q)
    elif case == "sdpa":

        def step():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif case in encodings:
        enc = encodings[case](nh)

        def step():
            return blockwise_attention(q, k, v, score_bias=enc.score_bias)
    elif case == "window256":

        def step():
            return blockwise_attention(q, k, v, window=256)
    elif case == "dense-alibi":
        enc = ALiBi(nh)

        def step():
            pos = torch.arange(T)
            allowed = pos[None, :] <= pos[:, None]
            mask = enc.score_bias(pos, pos).masked_fill(~allowed, float("-inf"))  # (nh, T, T)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        raise SystemExit(f"unknown case {case!r}; expected one of {CASES}")

    def fwd_bwd() -> float:
        t0 = time.perf_counter()
        y = step()
        torch.autograd.backward(y, grad)
        elapsed = time.perf_counter() - t0
        for t in (q, k, v):
            t.grad = None
        return elapsed

    base_rss = _rss_bytes()
    fwd_bwd()  # warm-up
    times = [fwd_bwd() for _ in range(repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "case": case,
        "T": T,
        "time_s": min(times),
        "peak_rss_mib": peak / 2**20,
        "extra_mib": max(peak - base_rss, 0) / 2**20,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="benchmarks/bench_blockwise.py", description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES + LAYER_CASES)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each case")
    p.add_argument("--dense-max", type=int, default=4096, help="longest T for the dense-alibi case")
    p.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--child", nargs=2, metavar=("CASE", "T"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]), args.repeats, args.threads)))
        return

    results = []
    for T in args.lengths:
        for case in args.cases:
            if case == "dense-alibi" and args.dense_max < T:
                continue
            cmd = [sys.executable, __file__, "--child", case, str(T), "--repeats", str(args.repeats)]
            cmd += ["--threads", str(args.threads)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"{case} T={T}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(
                f"T={T:6d} {case:12s} time {r['time_s'] * 1e3:9.1f} ms  "
                f"peak RSS {r['peak_rss_mib']:8.1f} MiB  extra {r['extra_mib']:8.1f} MiB",
                flush=True,
            )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        print(markdown(results))


def markdown(results: list[dict]) -> str:
    """The table; each row's ratios are to its baseline: ``sdpa`` for kernels, ``layer:rope`` for layers."""
    base = {(r["T"], r["case"].startswith("layer:")): r for r in results if r["case"] in ("sdpa", "layer:rope")}
    lines = [
        "| T | path | fwd+bwd ms | x base time | peak RSS MiB | x base RSS | extra MiB | x base extra |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b = base.get((r["T"], r["case"].startswith("layer:")))
        ratios = {
            key: "-" if b is None or b[key] <= 0 else f"{r[key] / b[key]:.2f}"
            for key in ("time_s", "peak_rss_mib", "extra_mib")
        }
        lines.append(
            f"| {r['T']} | {r['case']} | {r['time_s'] * 1e3:.1f} | {ratios['time_s']} | "
            f"{r['peak_rss_mib']:.0f} | {ratios['peak_rss_mib']} | {r['extra_mib']:.0f} | {ratios['extra_mib']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
