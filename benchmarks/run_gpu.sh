#!/usr/bin/env bash
# The FlexAttention check and all three benchmarks on one CUDA device (fp16 autocast for attention
# and training, fp32/bf16/fp16 for RoPE, torch.compile, SDPA's default = flash backend), in at most
# 8.5 minutes (the steps' limits add up to 510 s).
#
#   bash benchmarks/run_gpu.sh OUT_DIR
#   bash benchmarks/run_gpu.sh --dry-run OUT_DIR   # CPU, tiny sizes: every step runs (the test suite does)
#
# Writes OUT_DIR/{check_flex,bench_rope,bench_attention,bench_train}.json and .md (each script's
# printed tables) and
# prints a summary. Every step has its own time limit so that one slow step cannot take the
# others' time; a step that fails or times out is reported and the rest still run.
set -uo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:?usage: bash benchmarks/run_gpu.sh [--dry-run] OUT_DIR}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
DEVICE=cuda
SMOKE=()
if [ $DRY -eq 1 ]; then
  DEVICE=cpu
  SMOKE=(--smoke)
  echo "dry run: CPU, tiny sizes"
else
  $PY - <<'PY' || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"run_gpu.sh needs CUDA; torch {torch.__version__} sees no device (--dry-run runs on CPU)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi
FAILED=0

step() {  # step NAME LIMIT_S ARGS...
  local name=$1 limit=$2; shift 2
  [ $DRY -eq 0 ] || set --  # a dry run: the script's own tiny sizes, not the GPU's
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" $PY "benchmarks/$name.py" --device $DEVICE --out "$OUT/$name.json" "$@" "${SMOKE[@]}" \
    > "$OUT/$name.md" 2> "$OUT/$name.log"
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0))s; tables in $OUT/$name.md"
  [ $rc -eq 0 ] || { FAILED=1; tail -n 5 "$OUT/$name.log"; }
}

step check_flex 180 --seq-lens 4096 16384 --repeats 10 --record
step bench_rope 70 --dtypes fp32 bf16 fp16 --repeats 30
step bench_attention 80 --batch 4 --n-head 12 --n-embd 768 --seq-lens 1024 4096 --repeats 10
step bench_train 180 --settings owt-16m --repeats 10 \
  --compile-models "nanoGPT baseline" absolute rope nope qknorm rnope alibi fire fox

$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n## Summary\n")
for name in ("check_flex", "bench_rope", "bench_attention", "bench_train"):
    path = out / f"{name}.json"
    if not path.exists():
        print(f"- {name}: no result (see {name}.log)")
        continue
    d = json.loads(path.read_text())
    print(f"- {name}: {d['machine'].get('gpu')} torch {d['machine']['torch']}")
    for line in d.get("bars", []):
        print(f"  {line}")
    if name == "check_flex":
        for c in d["checks"]:
            print(f"  {c['case']}: auto takes {c.get('path', '?')}, flex {'ok' if c['ok'] else 'FAILED'} "
                  f"({c.get('max_error', c.get('error'))})")
        for r in d["results"]:
            print(f"  {r['case']} T={r['T']} {r['layer']} (auto: {r['auto']}): {r['median_ms']:.2f} ms, "
                  f"{r['x_rope']:.2f}x RoPE")
    if name == "bench_rope":
        for r in d["results"]:
            if r["mode"] == "fwd+bwd" and r["candidate"] in ("posenc", "posenc (compiled)", "transformers", "copy floor"):
                print(f"  {r['dtype']} fwd+bwd {r['candidate']}: {r['median_ms']:.4f} ms, {r['x_copy_floor']:.2f}x copy floor")
    if name == "bench_attention":
        for label, t_range, m_ratio, growth in d["memory_growth"]:
            print(f"  peak memory x{m_ratio:.1f} for T {t_range}: {label}: {growth}")
    if name == "bench_train":
        for r in d["results"]:
            print(f"  {r['setting']} {r['mode']} {r['model']}: {r['tokens_per_s']:.0f} tok/s, "
                  f"{r['x_baseline']:.3f}x baseline, peak {r['peak_bytes'] / 2**20:.0f} MiB")
PY
exit $FAILED
