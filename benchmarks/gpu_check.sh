#!/usr/bin/env bash
# The CUDA checks of issue 15, as one prepared run that fits in 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default: benchmarks/results/gpu
#
# 1. the gpu-marked tests                                       (~1 min)
# 2. bench_trainer.py on CUDA up to P = 65,536, 2 and 100 inputs (~3 min)
# 3. one full-budget cell, NMU ×, 100 seeds, the published schedule, stopping when solved,
#    cut at FULL_CELL_SECONDS (default 110 s) if it has not finished by then
# 4. a small study through `nalu-study launch` with resources.gpus 0.25 (four trials share
#    the GPU on Ray), 16 seeds x 4,000 steps per trial                (~2 min)
#
# Every step writes its JSON/log under OUT_DIR and the script goes on after a failure; the
# exit status is the number of failed steps. Run it from the repository root with the
# project's environment active (PYTHON, default python3, with torch and pytest; nalu-study
# on PATH for step 4). Steps 1-3 need only torch: the repository root goes on PYTHONPATH,
# so a bare CUDA image runs them uninstalled. Step 4 is skipped, and says so, where Ray,
# MLflow or Optuna is missing (DEVELOPERS.md: the lent GPU machine has none of them).
set -u
OUT="${1:-benchmarks/results/gpu}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FULL_CELL_SECONDS="${FULL_CELL_SECONDS:-110}"
mkdir -p "$OUT"
failures=0
step() {  # step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/gpu_check.log"
    local start=$SECONDS
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s" | tee -a "$OUT/gpu_check.log"
    else
        echo "   FAILED ($?) after $((SECONDS - start)) s; tail of $OUT/$name.log:" |
            tee -a "$OUT/gpu_check.log"
        tail -n 20 "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
        failures=$((failures + 1))
    fi
}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "no CUDA device visible to torch (or no torch in $PY): nothing to check" >&2
    exit 1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
uptime | tee -a "$OUT/gpu.txt"

# 1. gpu-marked tests (they skip themselves without CUDA; here they must run)
step gpu_tests 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/nalu_core

# 2. the trainer against the per-seed loop on the GPU, independent and 32 shared streams
step bench_trainer_nau_nmu 90 "$PY" benchmarks/bench_trainer.py --device cuda \
    --model nau-nmu --dims 100 2 --populations 1024 4096 16384 65536 --streams P 32 \
    --seconds 1 --profile-population 4096 --profile-steps 5 \
    --json "$OUT/bench_trainer_cuda_nau_nmu.json"
step bench_trainer_nalu 90 "$PY" benchmarks/bench_trainer.py --device cuda \
    --model nalu-nalu --dims 100 2 --populations 1024 4096 16384 65536 --streams P 32 \
    --seconds 1 --profile-population 4096 --profile-steps 5 \
    --json "$OUT/bench_trainer_cuda_nalu.json"

# 3. one cell of Madsen's table at the published budget
step full_cell_nmu_mul $((FULL_CELL_SECONDS + 60)) "$PY" benchmarks/full_cell.py \
    --model nmu --op mul --device cuda --time-limit "$FULL_CELL_SECONDS" \
    --json "$OUT/full_cell_nmu_mul_cuda.json"

# 4. four trials sharing the GPU through Ray (resources.gpus 0.25)
launch_gpu_share() {
WORK="$(mktemp -d)"
cat >"$WORK/gpu-share.yaml" <<'YAML'
name: gpu-share
description: four trials on one GPU (resources.gpus 0.25), NAU/NMU on 100-input arithmetic
tasks:
  - name: static
    ops: [add, mul]
    options: {input_size: 100}
space: quick
training:
  seeds: 16
  steps: 4000
  eval_every: 1000
  checkpoint_every: 2
  max_failures: 0
  options: {device: cuda}
budget:
  num_samples: 4
  max_concurrent: 4
sampler: {name: random, seed: 0}
pruner: {name: none}
objective: {metric: success_lower, tie_break: extrapolation_mse_median}
resources: {cpus: 1, gpus: 0.25}
YAML
step launch_gpu_share 150 nalu-study launch "$WORK/gpu-share.yaml" --workdir "$WORK/work"
cp "$WORK/gpu-share.yaml" "$OUT/" 2>/dev/null || true
rm -rf "$WORK"
}
if command -v nalu-study >/dev/null && "$PY" -c "import ray, mlflow, optuna" 2>/dev/null; then
    launch_gpu_share
else
    echo "== launch_gpu_share: SKIPPED (nalu-study, ray, mlflow or optuna not installed here)" |
        tee -a "$OUT/gpu_check.log"
fi

echo "gpu_check: $failures failed step(s); logs and JSON in $OUT" | tee -a "$OUT/gpu_check.log"
exit "$failures"
