#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on an H200): install, `pytest -m gpu`, the bf16 throughput table at
# ViT-B/16, T=16 (fast vs plain and each fast part, at the paper's per-GPU batch of 8), and a one-epoch
# `tcclip fit` on synthetic videos on the GPU. Everything goes under $OUT: gpu_check.json (per step: command, exit
# status, seconds; the device, driver, torch and CUDA versions), gpu_check.log (all output), pytest_gpu.xml,
# throughput.json, the fit run directory.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh                   # on the GPU machine
#   OUT=/tmp/dry DEVICE=cpu QUICK=1 INSTALL=0 LIMIT_SCALE=10 bash benchmarks/gpu_check.sh   # dry run on a CPU
#
# Variables: PYTHON (default: .venv/bin/python if present, else python3), DEVICE (cuda), QUICK (0: tiny settings,
# fp32), INSTALL (1: `pip install --no-deps -e .`, offline: torch, open_clip, lightning, ... must be installed
# already; 0: skip), LIMIT_SCALE (1: multiplies every step's time limit; the limits sum to under 8 minutes),
# OFFICIAL_DIR (unset: a checkout of the official code, measured beside this project's in the throughput table;
# not with QUICK=1, whose tiny model the official code cannot build).
# A failing step does not stop the later ones; the script exits non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the directory for the results}
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
INSTALL=${INSTALL:-1}
LIMIT_SCALE=${LIMIT_SCALE:-1}   # the dry run on a slow CPU multiplies every step's time limit
LOG="$OUT/gpu_check.log"
STEPS="$OUT/steps.jsonl"
: > "$LOG"
: > "$STEPS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

# step NAME TIMEOUT_SECONDS COMMAND...: run, log, record exit status and seconds.
step() {
    local name=$1 limit=$(($2 * LIMIT_SCALE))
    shift 2
    echo "=== $name: $* (limit ${limit}s)" | tee -a "$LOG"
    local start rc
    start=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    local seconds
    seconds=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    echo "=== $name: exit $rc after ${seconds}s" | tee -a "$LOG"
    "$PYTHON" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "exit": int(sys.argv[2]),
        "seconds": float(sys.argv[3]), "command": sys.argv[4:]}))' "$name" "$rc" "$seconds" "$@" >> "$STEPS"
    [ "$rc" -eq 0 ] || failed=1
    return 0
}

{ nvidia-smi || true; } >> "$LOG" 2>&1
if [ "$INSTALL" = 1 ]; then
    step install 40 "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
fi
step environment 20 "$PYTHON" -c "import torch, tcclip, open_clip, lightning; print(tcclip.__file__); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

step pytest_gpu 150 "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py --junitxml="$OUT/pytest_gpu.xml"

if [ "$QUICK" = 1 ]; then
    bench=(--quick)
    dtype=fp32   # bf16 on a CPU is very slow; the GPU run uses bf16
else
    bench=(--train-batch 8 --train-rounds 1)   # one process per training row fits the step's time limit
    dtype=bf16
    # The speed targets are against the official code: OFFICIAL_DIR names a checkout of it (naver-ai/tc-clip; e.g.
    # .official/, which git ignores, so it can travel with the working tree), which needs einops, ftfy, regex and
    # timm installed.
    if [ -n "${OFFICIAL_DIR:-}" ]; then
        if "$PYTHON" -c "import einops, ftfy, regex, timm" >> "$LOG" 2>&1; then
            bench+=(--official "$OFFICIAL_DIR")
        else
            echo "warning: OFFICIAL_DIR is set but einops, ftfy, regex or timm is missing: no official rows" | tee -a "$LOG"
        fi
    fi
fi
step throughput 170 "$PYTHON" benchmarks/throughput.py --device "$DEVICE" --dtype "$dtype" \
    "${bench[@]}" --json "$OUT/throughput.json"

data="$OUT/synth"
accelerator=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
precision=$([ "$DEVICE" = cuda ] && echo bf16-mixed || echo 32-true)
step synth 30 "$PYTHON" -m tcclip.cli data synth --out "$data" --classes MoveLeft,MoveRight,MoveUp,MoveDown \
    --class-colours --videos-per-class 20 --size 32 --num-frames 16-24 --formats mp4
step fit 60 "$PYTHON" -m tcclip.cli fit --config configs/demo.yaml --data.init_args.root "$data" \
    --trainer.default_root_dir "$OUT/fit" --trainer.max_epochs 1 --trainer.accelerator "$accelerator" \
    --trainer.precision "$precision"

"$PYTHON" - "$OUT" "$STEPS" <<'PY' >> "$LOG" 2>&1
import json, platform, sys
from pathlib import Path

out, steps = Path(sys.argv[1]), [json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines()]
summary = {"steps": steps, "python": platform.python_version()}
try:
    import torch

    summary.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        summary["device"] = torch.cuda.get_device_name(0)
        import subprocess

        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        summary["driver"] = smi.stdout.strip()
except Exception as err:  # the summary must be written even when torch is broken
    summary["torch_error"] = repr(err)
throughput = out / "throughput.json"
if throughput.exists():
    summary["throughput"] = json.loads(throughput.read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({s["step"]: s["exit"] for s in steps}))
PY
tail -n 1 "$LOG"
exit $failed
