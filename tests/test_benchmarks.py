"""Smoke tests for benchmarks/: ``run_gpu.sh --dry-run`` runs every script of the GPU run on CPU
at tiny sizes, and each writes valid JSON and its tables; the RoPE benchmark's candidates compute
the same rotation (so the table compares equal work). Timings are never asserted: the
benchmarks are scripts, not timed tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _scripts import load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return load_script(BENCH / f"{name}.py", f"bench_{name}_under_test")
    finally:
        sys.path.remove(str(BENCH))


def check_payload(path: Path, benchmark: str) -> dict:
    data = json.loads(path.read_text())
    assert data["benchmark"] == benchmark
    for key in ("cpu", "torch", "threads", "date"):
        assert key in data["machine"], key
    assert data["results"], "no rows"
    for row in data["results"]:
        assert 0 < row["median_ms"] < 60_000, row  # a real, finite measurement
    return data


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    """``bash benchmarks/run_gpu.sh --dry-run OUT``: the GPU run's every step, on CPU at tiny sizes."""
    out = tmp_path_factory.mktemp("gpu-dry-run")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(BENCH / "run_gpu.sh"), "--dry-run", str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dry run: CPU" in done.stdout and "## Summary" in done.stdout and "no result" not in done.stdout
    return out


def test_check_flex_smoke(dry_run):
    """Every case's flex layer (unfused on CPU, forward only) equals its blockwise twin."""
    data = check_payload(dry_run / "check_flex.json", "check_flex")
    checks = {c["case"]: c for c in data["checks"]}
    assert {"alibi", "kerple", "t5", "fire", "fox", "rope window 256", "rope sinks softcap"} <= checks.keys()
    assert any(name.startswith("kernel") for name in checks) and "fire bf16" in checks and "fire fp16" in checks
    assert {"rotary float32", "rotary bfloat16", "rotary float16"} <= checks.keys()
    layers = {name: c for name, c in checks.items() if not name.startswith("rotary")}
    assert all(c["ok"] and c["backward"] is False for c in layers.values()), checks
    assert all(c["ok"] and c["key"] is None for name, c in checks.items() if name.startswith("rotary")), checks
    assert all(
        c["max_error"] < 1e-5
        for name, c in checks.items()
        if not name.endswith(("bf16", "fp16", "bfloat16", "float16"))
    ), checks
    assert data["flex_compiles"] is False and data["bars"]
    assert "| case | T | auto path |" in (dry_run / "check_flex.md").read_text()


def test_check_flex_writes_the_record_auto_reads(tmp_path, monkeypatch):
    """``check_flex.py --record``'s file, read back by posenc.gpu_checks: its passing keys are
    checked, its failing ones and the keyless kernel row are not."""
    from posenc import gpu_checks

    check_flex = load("check_flex")
    payload = {"argv": ["--device", "cuda"], "machine": {"gpu": "a GPU", "torch": "2.x", "cuda": "12"}}
    payload["checks"] = [
        {"case": "alibi", "key": "ALiBi hs64 float32", "backward": True, "ok": True, "max_error": 1e-6},
        {"case": "fire", "key": "FIRE hs64 float32", "backward": True, "ok": False, "max_error": 0.5},
        {"case": "kernel", "key": None, "backward": True, "ok": True},
    ]
    check_flex.write_record(payload, tmp_path / "gpu_checks.json")
    monkeypatch.setattr(gpu_checks, "RECORD", tmp_path / "gpu_checks.json")
    assert gpu_checks.record()["device"] == "a GPU" and len(gpu_checks.record()["cases"]) == 3
    assert gpu_checks.checked("ALiBi hs64 float32", backward=True)
    assert not gpu_checks.checked("FIRE hs64 float32") and not gpu_checks.checked(None)


def test_bench_rope_smoke(dry_run):
    data = check_payload(dry_run / "bench_rope.json", "bench_rope")
    candidates = {r["candidate"] for r in data["results"]}
    assert {"copy floor", "posenc", "rotate-half formula", "complex multiply"} <= candidates
    assert {r["mode"] for r in data["results"]} == {"fwd", "fwd+bwd"}
    assert "| candidate |" in (dry_run / "bench_rope.md").read_text()


def test_bench_attention_smoke(dry_run):
    data = check_payload(dry_run / "bench_attention.json", "bench_attention")
    paths = {r["path"] for r in data["results"] if r["part"] == "encodings"}
    assert {"alibi [B]", "qknorm [R]", "rnope-swa [r]", "rnope-swa [N]", "fox [G]"} <= paths
    impls = {r["impl"] for r in data["results"] if r["part"] == "kernels"}
    assert impls == {"sdpa default", "sdpa math", "naive"}


def test_bench_train_smoke(dry_run):
    data = check_payload(dry_run / "bench_train.json", "bench_train")
    models = {r["model"] for r in data["results"]}
    assert {"nanoGPT baseline", "absolute", "rope", "rnope-swa", "alibi", "fire", "fox"} <= models
    assert all(r["tokens_per_s"] > 0 for r in data["results"])


def test_rope_candidates_agree():
    bench = load("bench_rope")
    B, nh, T, hs = 2, 3, 11, 8
    q, k = torch.randn(B, nh, T, hs), torch.randn(B, nh, T, hs)
    fns = bench.candidates(B, nh, T, hs, torch.float32, torch.device("cpu"))
    half = fns["posenc"](q, k)
    interleaved = fns["posenc interleaved"](q, k)
    for name, want in [
        ("rotate-half formula", half),
        ("transformers", half),
        ("complex multiply", interleaved),
        ("rotary-embedding-torch", interleaved),
    ]:
        if name not in fns:
            continue
        got = fns[name](q, k)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=name)


def test_naive_attention_matches_sdpa():
    bench = load("bench_attention")
    from posenc.attention import causal_attention

    q, k, v = (torch.randn(1, 2, 9, 4) for _ in range(3))
    bias = torch.randn(2, 9, 9)
    for b, w in [(None, None), (None, 3), (bias, None)]:
        torch.testing.assert_close(bench.naive_attention(q, k, v, b, w), causal_attention(q, k, v, bias=b, window=w))


def test_nanogpt_baseline_matches_absolute_gpt_dimensions():
    bench = load("bench_train")
    models = bench.build_models("tiny", torch.device("cpu"))
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert n["nanoGPT baseline"] == n["absolute"]


def test_bench_hf_times_the_same_model_both_ways():
    pytest.importorskip("transformers")
    bench = load("bench_hf")
    rows = bench.bench("llama", T=16, new=2, repeats=1)  # checks the logits agree before timing
    assert [r["what"] for r in rows] == ["forward", "generate 2"] and all(r["ratio"] > 0 for r in rows)
    assert rows[1]["same_tokens"] is True
    assert "| llama | forward | 16 |" in bench.markdown(rows)


@pytest.mark.parametrize("mode", ["--quick", "--smoke"])
def test_a_short_run_never_writes_the_committed_results(mode, tmp_path, monkeypatch):
    bench = load("bench_rope")
    common = bench.common
    committed = common.RESULTS_DIR / "bench_rope.json"
    before = committed.read_bytes()
    monkeypatch.chdir(tmp_path)
    args = common.base_parser("bench_rope", "").parse_args([mode])
    common.setup(args)
    assert args.out == Path("out/benchmarks") / f"bench_rope-{mode[2:]}.json"
    assert common.RESULTS_DIR not in args.out.resolve().parents
    full = common.base_parser("bench_rope", "").parse_args([])
    common.setup(full)
    assert full.out == committed  # a full run still refreshes them
    assert committed.read_bytes() == before


def test_a_check_line_says_slower_not_a_fraction_faster():
    bench = load("bench_rope")
    rows = [
        {"dtype": "fp32", "mode": "fwd+bwd", "candidate": "posenc", "median_ms": 4.0, "x_copy_floor": 1.0},
        {"dtype": "fp32", "mode": "fwd+bwd", "candidate": "transformers", "median_ms": 1.0, "x_copy_floor": 1.0},
    ]
    line = bench.bar_check(rows)[0]
    assert "4.00x slower than transformers" in line and "0.25x" not in line and line.endswith("MISS")
    rows[1]["median_ms"] = 16.0
    assert "4.00x faster than transformers" in bench.bar_check(rows)[0]
