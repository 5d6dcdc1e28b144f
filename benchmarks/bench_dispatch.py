"""Score-bias attention layers on the path ``auto`` takes and on the dense path, beside the RoPE layer.

    python benchmarks/bench_dispatch.py                       # B=8, C=256 (4 heads), T in {128, 512}
    python benchmarks/bench_dispatch.py --lengths 128 512 1024 --batch 8

One attention layer as ``GPT`` builds it (projections included) per encoding, forward + backward
from a fixed upstream gradient, fp32, one intra-op thread unless ``--threads`` says otherwise.
Each encoding runs twice: ``auto`` (for training on CPU, the blockwise path's fused tiles where they
compute the call, else the dense path while its mask fits ``posenc.attention.dense.DENSE_BUDGET``)
and ``dense`` (the fused tiles turned off: the dense path within the budget). Every timed
repeat runs every candidate once, in turn, so that load on the machine falls on all of them
alike; reported is the median over repeats and its ratio to the RoPE layer (SDPA's fused causal
kernel) of the same T.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from posenc import GPTConfig
from posenc.attention import kernel

ENCODINGS = ("rope", "alibi", "kerple", "t5", "fire", "fox", "rope_sinks")


def layer(pe: str, n_head: int, n_embd: int, T: int) -> torch.nn.Module:
    config = GPTConfig(n_layer=1, n_head=n_head, n_embd=n_embd, block_size=T, pe=pe)
    return config.build_layers()[0].attn


def run(lengths: list[int], batch: int, n_head: int, n_embd: int, repeats: int) -> list[dict]:
    results = []
    for T in lengths:
        x = torch.randn(batch, T, n_embd, requires_grad=True)
        grad = torch.randn(batch, T, n_embd)
        layers = {pe: layer(pe, n_head, n_embd, T) for pe in ENCODINGS}
        cases = [(pe, "auto") for pe in ENCODINGS] + [(pe, "dense") for pe in ENCODINGS if pe != "rope"]
        times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
        for rep in range(repeats + 1):  # the first round warms up
            for pe, path in cases:
                kernel.flash_tiles_take = no_tiles if path == "dense" else tiles_take
                t0 = time.perf_counter()
                torch.autograd.backward(layers[pe](x), grad)
                if rep:
                    times[(pe, path)].append(time.perf_counter() - t0)
        kernel.flash_tiles_take = tiles_take
        base = statistics.median(times[("rope", "auto")])
        for (pe, path), ts in times.items():
            med = statistics.median(ts)
            results.append({"T": T, "encoding": pe, "path": path, "median_ms": med * 1e3, "x_rope": med / base})
            print(f"T={T:5d} {pe:11s} {path:9s} {med * 1e3:9.2f} ms  {med / base:5.2f}x RoPE", flush=True)
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| T | encoding | auto: ms | auto: x RoPE | dense: ms | dense: x RoPE |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    by = {(r["T"], r["encoding"], r["path"]): r for r in results}
    for T, pe, path in by:
        if path != "auto":
            continue
        a, b = by[(T, pe, "auto")], by.get((T, pe, "dense"))
        tail = "- | -" if b is None else f"{b['median_ms']:.1f} | {b['x_rope']:.2f}"
        lines.append(f"| {T} | {pe} | {a['median_ms']:.1f} | {a['x_rope']:.2f} | {tail} |")
    return "\n".join(lines)


tiles_take = kernel.flash_tiles_take


def no_tiles(*args, **kwargs) -> bool:
    return False


def main() -> None:
    p = argparse.ArgumentParser(prog="benchmarks/bench_dispatch.py", description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = run(args.lengths, args.batch, args.n_head, args.n_embd, args.repeats)
    print(markdown(results))
    if args.out is not None:
        args.out.write_text(
            json.dumps({"argv": vars(args) | {"out": str(args.out)}, "results": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
