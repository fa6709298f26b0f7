#!/usr/bin/env bash
# Verify and measure impl="cce" (cut-cross-entropy's Triton kernel) on a machine with a CUDA GPU.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default ./gpu_results; about 10 minutes at most)
#
# 1. installs cut-cross-entropy==25.1.1 if it is missing (--no-deps, so the machine's CUDA torch and
#    its triton stay as they are; offline machines: CCE_WHEELHOUSE=/dir/with/the/wheel),
# 2. runs tests/test_losses.py — the CPU tests plus the CUDA ones: cce vs a float64 reference in
#    bf16 (mean/sum/none, N=1, ignore_index, all targets ignored, paper filter under autocast) and
#    blockwise fp32 parity on CUDA — and the Wave recompute node's CUDA tests (wave_cuda.txt),
# 3. runs benchmarks/linear_cross_entropy.py on CUDA, bf16 autocast, every implementation, in one
#    process (peak = CUDA allocator max_memory_allocated delta), GPU_CASES cases (default below).
# 4. times bf16 QA training steps of both encoders (benchmarks/gpu_train_check.py steps),
# 5. checks FSDP2 sharding on one GPU against an unsharded copy (gpu_train_check.py fsdp2, torchrun),
#    and DeepSpeed ZeRO-3 the same way when DeepSpeed is installed (gpu_train_check.py zero3).
# Writes OUT_DIR/{env.txt,install.log,pytest.txt,pytest.xml,linear_cross_entropy.json,.md,
# train_steps.json,fsdp2.json,gpu_check.json,summary.txt}; copy gpu_check.json to results/.
# Exit status 0 only when the cce tests ran (not skipped) and passed.
set -uo pipefail

OUT="${1:-./gpu_results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
GPU_CASES="${GPU_CASES:-2048x8192x256,8192x32768x256,8192x131072x512,32768x32768x512,32768x131072x512}"
status=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; nothing to check" | tee "$OUT/summary.txt"
    exit 2
fi

# 1. the optional dependency
if ! "$PY" -c "import cut_cross_entropy" 2>/dev/null; then
    if [ -n "${CCE_WHEELHOUSE:-}" ]; then
        timeout 120 "$PY" -m pip install --no-deps --no-index --find-links "$CCE_WHEELHOUSE" \
            "cut-cross-entropy==25.1.1" >"$OUT/install.log" 2>&1
    else
        timeout 120 "$PY" -m pip install --no-deps "cut-cross-entropy==25.1.1" >"$OUT/install.log" 2>&1
    fi
    "$PY" -c "import triton" 2>/dev/null || timeout 180 "$PY" -m pip install triton >>"$OUT/install.log" 2>&1
fi
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    "$PY" - <<'EOF'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported())
for pkg in ("cut-cross-entropy", "triton"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "NOT INSTALLED")
from nami.losses import cce_available, resolve_impl
print("cce_available", cce_available(), "auto on cuda ->", resolve_impl("auto", "cuda"))
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. parity tests (CPU tests included: they take seconds); the Wave node's CUDA tests too
timeout 240 "$PY" -m pytest -q -rs tests/test_losses.py --junitxml="$OUT/pytest.xml" -p no:cacheprovider \
    2>&1 | tee "$OUT/pytest.txt"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -eq 0 ] || status=1
cce_ran=$("$PY" - "$OUT/pytest.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "cce" in c.get("name", "")]
ran = [c for c in cases if c.find("skipped") is None and "on_cpu" not in c.get("name", "")]
print(len(ran))
EOF
)
cce_ran=${cce_ran:-0}
[ "$cce_ran" -gt 0 ] || status=1
timeout 120 "$PY" -m pytest -q -rs tests/test_wave_memory.py -k cuda -p no:cacheprovider 2>&1 | tee "$OUT/wave_cuda.txt"
wave_rc=${PIPESTATUS[0]}

# 3. benchmark on CUDA
timeout 240 "$PY" benchmarks/linear_cross_entropy.py --device cuda --dtypes bf16 --in-process --repeats 5 \
    --cases "$GPU_CASES" --case-timeout-s 120 --out-dir "$OUT" 2>&1 | tee "$OUT/benchmark.txt"
bench_rc=${PIPESTATUS[0]}

# 4. bf16 QA training steps of both encoders (tokens/s, peak memory), 5. a 1-GPU FSDP2 parity run
timeout 100 "$PY" benchmarks/gpu_train_check.py steps --device cuda --out "$OUT/train_steps.json" \
    2>&1 | tee "$OUT/train_steps.txt"
steps_rc=${PIPESTATUS[0]}
timeout 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/gpu_train_check.py fsdp2 \
    --device cuda --out "$OUT/fsdp2.json" 2>&1 | tee "$OUT/fsdp2.txt"
fsdp_rc=${PIPESTATUS[0]}
zero_rc=-1  # not run: DeepSpeed missing
if "$PY" -c "import deepspeed" 2>/dev/null; then
    timeout 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/gpu_train_check.py zero3 \
        --device cuda --out "$OUT/zero3.json" 2>&1 | tee "$OUT/zero3.txt"
    zero_rc=${PIPESTATUS[0]}
fi
[ "$steps_rc" -eq 0 ] && [ "$fsdp_rc" -eq 0 ] && [ "$zero_rc" -le 0 ] || status=1

# results/gpu_check.json: everything above in one record (copy it into results/ and commit)
"$PY" - "$OUT" "$test_rc" "$cce_ran" "$bench_rc" "$steps_rc" "$fsdp_rc" "$zero_rc" <<'EOF'
import json, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
record = {"command": "bash benchmarks/gpu_check.sh", "commit": commit,
          "machine": (out / "env.txt").read_text().splitlines()[:3],
          "cce_tests": {"exit_status": int(sys.argv[2]), "gpu_tests_ran": int(sys.argv[3])},
          "cce_benchmark": {"exit_status": int(sys.argv[4]), "results": load("linear_cross_entropy.json")},
          "train_steps": {"exit_status": int(sys.argv[5]), "results": load("train_steps.json")},
          "fsdp2": {"exit_status": int(sys.argv[6]), "results": load("fsdp2.json")},
          "deepspeed_zero3": {"exit_status": int(sys.argv[7]), "results": load("zero3.json")}}
(out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
EOF

{
    echo "train steps exit status: $steps_rc; fsdp2 smoke exit status: $fsdp_rc; zero3 smoke: $zero_rc (-1 = no DeepSpeed)"
    echo "pytest exit status: $test_rc; cce GPU tests that ran: $cce_ran"
    echo "Wave recompute node on CUDA (tests/test_wave_memory.py -k cuda) exit status: $wave_rc"
    echo "benchmark exit status: $bench_rc (124 = hit the time limit; partial results are still written)"
    if [ "$status" -eq 0 ]; then echo "cce: VERIFIED on this GPU"; else echo "cce: NOT verified"; fi
} | tee "$OUT/summary.txt"
exit "$status"
