"""Imported models beside Hugging Face's own: the same weights, forward and cached greedy generation.

    python benchmarks/bench_hf.py                          # Llama-, Gemma-3- and Cohere-2-style, T=512, fp32, CPU
    python benchmarks/bench_hf.py --families llama --length 512 --new 32 --repeats 5 --markdown

Each family is a random Hugging Face model of one size (6 layers, 512 channels, 8 query and 4
key/value heads, vocabulary 8192), imported with ``GPT.from_hf``. Timed, in turn within every
repeat so that load on the machine falls on both alike: the forward over a (1, T) batch, and
``generate`` of ``--new`` greedy tokens after a T-token prompt with the KV cache (posenc's
``GPT.generate`` beside ``model.generate(do_sample=False)``). Reported: medians, and the ratio
posenc / Hugging Face as the median over repeats of each repeat's own ratio (below 1: posenc is
faster), beside the ratio of the best times. Both run fp32 with the same intra-op threads;
Hugging Face uses its default attention implementation (SDPA). The outputs are checked equal
before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers

from posenc import GPT

SIZES = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=4096,
)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES, pad_token_id=0)),
    "gemma3": lambda: transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(
            **SIZES,
            head_dim=64,
            sliding_window=128,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
            pad_token_id=0,
        )
    ),
    "cohere2": lambda: transformers.Cohere2ForCausalLM(
        transformers.Cohere2Config(
            **SIZES,
            sliding_window=128,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
            pad_token_id=0,
        )
    ),
}


def bench(family: str, T: int, new: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    hf = FAMILIES[family]().eval()
    ours = GPT.from_hf(hf).eval()
    prompt = torch.randint(0, SIZES["vocab_size"], (1, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(prompt)[0] - hf(prompt).logits).abs().max().item()
    assert diff < 1e-3, f"{family}: logits differ by {diff}"
    cases = {
        ("forward", "posenc"): lambda: ours(prompt),
        ("forward", "hf"): lambda: hf(prompt),
        ("generate", "posenc"): lambda: ours.generate(prompt, new, temperature=0),
        ("generate", "hf"): lambda: hf.generate(prompt, max_new_tokens=new, do_sample=False, pad_token_id=0),
    }
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    outputs = {}
    with torch.no_grad():
        for rep in range(repeats + 1):  # the first round warms up
            for case, fn in cases.items():
                t0 = time.perf_counter()
                out = fn()
                if rep:
                    times[case].append(time.perf_counter() - t0)
                if case[0] == "generate":
                    outputs[case[1]] = out
    same = torch.equal(outputs["posenc"], outputs["hf"])
    rows = []
    for what in ("forward", "generate"):
        ours_t, hf_t = times[(what, "posenc")], times[(what, "hf")]
        mine, theirs = statistics.median(ours_t), statistics.median(hf_t)
        # each repeat times the two back to back, so a burst of load falls on one pair: the median of
        # the pairs' ratios is steadier than the ratio of the medians
        ratio = statistics.median(a / b for a, b in zip(ours_t, hf_t, strict=True))
        rows.append(
            {
                "family": family,
                "what": what if what == "forward" else f"generate {new}",
                "T": T,
                "posenc_ms": mine * 1e3,
                "hf_ms": theirs * 1e3,
                "ratio": ratio,
                "ratio_of_best": min(ours_t) / min(hf_t),
                "same_tokens": same if what == "generate" else None,
            }
        )
        print(
            f"{family:8s} {rows[-1]['what']:12s} T={T} posenc {mine * 1e3:8.1f} ms  HF {theirs * 1e3:8.1f} ms"
            f"  posenc/HF {ratio:4.2f} (best of each {min(ours_t) / min(hf_t):4.2f})",
            flush=True,
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | what | T | posenc (ms) | HF (ms) | posenc / HF | best / best | same greedy tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "" if r["same_tokens"] is None else ("yes" if r["same_tokens"] else "no")
        lines.append(
            f"| {r['family']} | {r['what']} | {r['T']} | {r['posenc_ms']:.1f} | {r['hf_ms']:.1f} | {r['ratio']:.2f} | {r['ratio_of_best']:.2f} | {same} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--new", type=int, default=32, help="greedy tokens generated after the prompt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for family in args.families for r in bench(family, args.length, args.new, args.repeats)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
