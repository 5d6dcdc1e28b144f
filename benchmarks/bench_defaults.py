"""Score-bias attention at the process's own defaults: a whole GPT's training step against the same
GPT with RoPE (on SDPA), on CPU, each case in a fresh process.

    python benchmarks/bench_defaults.py              # the table; writes benchmarks/results/bench_defaults.json
    python benchmarks/bench_defaults.py --short      # fewer repeats, T=128 and 512 only; writes nothing
    python benchmarks/bench_defaults.py --cases alibi fire --sizes 4096 --out /tmp/x.json

The model: ``GPTConfig(n_layer=4, n_head=4, n_embd=C, vocab_size=256, pe=...)``, float32, no
dropout. One step = forward, cross-entropy loss, backward (gradients set to None between steps).
Sizes: T=128 and T=512 at B=8, C=128; T=4096 at B=1, C=256. Cases: ALiBi, KERPLE, T5, FIRE, FoX,
CoPE, stick-breaking, and RoPE with a 256-token sliding window or 256-token chunks.

Nothing is changed from a user's process: torch's default intra-op threads, no environment
variables (the children inherit this process's environment; set none), the default allocator.

Time: one child process per (case, size) builds the case's GPT and the RoPE GPT from the same seed
and times their steps alternately (A B A B ..., after a warm-up step of each): the ratio of the
medians, measured side by side on a machine that may be busy. Peak memory (T=4096 only): one
child per model, alone, runs two steps; the peak resident set (VmHWM) above the resident set after
building the model and its batch (``torch._dynamo`` imported before that baseline: the first
``torch.utils.checkpoint`` or compile imports it once per process, ~80 MiB that are no step's);
reported as the case's peak over the RoPE GPT's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_defaults.json"

#: case -> GPTConfig fields beside the sizes
CASES: dict[str, dict] = {
    "alibi": {"pe": "alibi"},
    "kerple": {"pe": "kerple"},
    "t5": {"pe": "t5"},
    "fire": {"pe": "fire"},
    "fox": {"pe": "fox"},
    "cope": {"pe": "cope"},
    "stickbreaking": {"pe": "stickbreaking"},
    "rope window 256": {"pe": "rope", "sliding_window": 256},
    "rope chunk 256": {"pe": "rope", "chunk": 256},
}
BASELINE = {"pe": "rope"}
#: T -> (B, C)
SIZES = {128: (8, 128), 512: (8, 128), 4096: (1, 256)}
#: the goal per case: (max time ratio at T <= 512, at T = 4096, max peak-memory ratio at 4096)
GOALS = dict.fromkeys(("alibi", "kerple", "t5", "fire", "fox"), (1.3, 2.0, 1.5))
GOALS |= {"cope": (2.5, 4.0, None), "stickbreaking": (2.5, 4.0, None)}
GOALS |= {"rope window 256": (None, 1.0, None), "rope chunk 256": (None, 1.0, None)}


def build(fields: dict, T: int, C: int):
    import torch

    from posenc import GPT, GPTConfig

    fields = dict(fields)
    chunk = fields.pop("chunk", None)
    config = GPTConfig(n_layer=4, n_head=4, n_embd=C, block_size=T, vocab_size=256, bias=False, **fields)
    if chunk is not None:
        config = config.map_layers(lambda i, layer: layer.replace(mask=layer.mask.replace(chunk=chunk)))
    torch.manual_seed(0)
    return GPT(config)


def batch(B: int, T: int):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (B, T), generator=g), torch.randint(0, 256, (B, T), generator=g)


def step(model, idx, targets) -> None:
    _, loss = model(idx, targets)[:2]
    loss.backward()
    for p in model.parameters():
        p.grad = None


def child_time(case: str, T: int, repeats: int) -> dict:
    """The case's GPT and the RoPE GPT, steps timed alternately; medians and their ratio."""
    import torch

    B, C = SIZES[T]
    models = {"case": build(CASES[case], T, C), "rope": build(BASELINE, T, C)}
    idx, targets = batch(B, T)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        step(model, idx, targets)  # warm-up
    for r in range(repeats):
        for name in list(models)[r % 2 :] + list(models)[: r % 2]:
            t0 = time.perf_counter()
            step(models[name], idx, targets)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    row = {"case": case, "T": T, "B": B, "C": C, "threads": torch.get_num_threads(), "repeats": repeats}
    return row | {"case_ms": med["case"] * 1e3, "rope_ms": med["rope"] * 1e3, "ratio": med["case"] / med["rope"]}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_memory(fields: dict, T: int) -> dict:
    """Peak resident set of two steps of one GPT above the resident set before them (KiB)."""
    import torch._dynamo  # noqa: F401  (see the module docstring)

    B, C = SIZES[T]
    model = build(fields, T, C)
    idx, targets = batch(B, T)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    base = _rss_kib("VmRSS")
    for _ in range(2):
        step(model, idx, targets)
    return {"base_kib": base, "peak_kib": _rss_kib("VmHWM"), "extra_kib": _rss_kib("VmHWM") - base}


def run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="benchmarks/bench_defaults.py", description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--sizes", nargs="+", type=int, choices=list(SIZES), default=None, help="T values")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per model (default 10, short 4)")
    p.add_argument("--short", action="store_true", help="T=128 and 512, 4 repeats; writes only to --out")
    p.add_argument("--out", type=Path, default=None, help=f"JSON results (default, full mode only: {RESULTS})")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "time":
            print(json.dumps(child_time(rest[0], int(rest[1]), int(rest[2]))))
        else:
            print(json.dumps(child_memory(json.loads(rest[0]), int(rest[1]))))
        return
    out = args.out if args.out is not None or args.short else RESULTS
    if args.short and out is not None and out.resolve() == RESULTS.resolve():
        p.error(f"--short never writes the committed results ({RESULTS}); give another --out")
    sizes = args.sizes or ([128, 512] if args.short else list(SIZES))
    repeats = args.repeats or (4 if args.short else 10)
    rows, memory = [], {}
    for T in sizes:
        for case in args.cases:
            row = run_child(["--child", "time", case, str(T), str(repeats)])
            rows.append(row)
            print(
                f"{case:>16} T={T:<5} {row['ratio']:.2f}x ({row['case_ms']:.0f} / {row['rope_ms']:.0f} ms)", flush=True
            )
        if T == 4096:
            memory["rope"] = run_child(["--child", "memory", json.dumps(BASELINE), str(T)])
            for case in args.cases:
                memory[case] = run_child(["--child", "memory", json.dumps(CASES[case]), str(T)])
                ratio = memory[case]["extra_kib"] / memory["rope"]["extra_kib"]
                memory[case]["ratio"] = ratio
                print(f"{case:>16} T=4096 peak RSS over baseline {ratio:.2f}x", flush=True)
    print("\n" + table(rows, memory, sizes, args.cases))
    if out is not None:
        import torch

        payload = {
            "benchmark": "bench_defaults",
            "argv": sys.argv[1:] if argv is None else argv,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "time": rows,
            "memory": memory,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {out}")


def table(rows: list[dict], memory: dict, sizes: list[int], cases: list[str]) -> str:
    """Markdown: per case the time ratio at each size and the T=4096 peak-memory ratio, with goals."""
    ratio = {(r["case"], r["T"]): r["ratio"] for r in rows}
    heads = [f"T={T}, B={SIZES[T][0]}, C={SIZES[T][1]}: time" for T in sizes]
    heads += ["T=4096: peak RSS over baseline"] * (4096 in sizes) + ["goal (time T<=512 / T=4096 / RSS)"]
    lines = ["| case | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for case in cases:
        cells = [fmt(ratio.get((case, T))) for T in sizes]
        if 4096 in sizes:
            cells.append(fmt(memory.get(case, {}).get("ratio")))
        goal = " / ".join("-" if g is None else f"{g:g}x" for g in GOALS[case])
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
