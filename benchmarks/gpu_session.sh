#!/usr/bin/env bash
# One GPU session, one command:   bash benchmarks/gpu_session.sh "$OUT"
#
# Installs the package (with the CUDA extension), runs the GPU tests and every benchmark under benchmarks/, and
# writes each step into "$OUT/<date>-<device>-<what>/" (device.txt: nvidia-smi + versions; commands.txt;
# output.log: raw stdout+stderr; plus the JSON/PNG a benchmark writes) ready to commit under profiles/.
# The whole script stays within 10 minutes: each step gets min(its own limit, what is left of the budget),
# steps run in priority order, and a step the budget cannot cover is recorded as skipped.
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
BUDGET_S=${SODP_SESSION_BUDGET_S:-570}  # 10 min minus a margin for the machine's own start/transfer
cd "$(dirname "$0")/.."
START=$(date +%s)
DATE=$(date +%Y-%m-%d)
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
DEVICE=${DEVICE:-nogpu}
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

device_info() {  # $1: folder
  {
    echo "date: $(date -Iseconds)"
    echo "host: $(hostname)"
    echo "git: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed paths"
    nvidia-smi 2>&1
    nvcc --version 2>&1 | tail -2
    python - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
try:
    from sodp_fast.ops.dispatch import describe_backends; print("backends", describe_backends())
except Exception as e:
    print("sodp_fast not importable:", e)
EOF
  } > "$1/device.txt"
}

# step WHAT LIMIT_S CMD...: run CMD in $OUT/<date>-<device>-WHAT/ (its $STEP_DIR), bounded by the budget
step() {
  local what=$1 limit=$2; shift 2
  local dir="$OUT/$DATE-$DEVICE-$what" left=$((BUDGET_S - ($(date +%s) - START)))
  mkdir -p "$dir"
  if ((left < 20)); then
    echo "skipped: session budget spent (${left}s left)" | tee "$dir/output.log"
    return 0
  fi
  ((limit > left)) && limit=$left
  device_info "$dir"
  printf '%s\n' "${*//\$STEP_DIR/$dir}" > "$dir/commands.txt"
  echo "== $what (limit ${limit}s): $*"
  STEP_DIR=$dir timeout --kill-after=10 "$limit" bash -c "$*" > "$dir/output.log" 2>&1
  local rc=$?
  echo "exit status: $rc$([ $rc = 124 ] && echo ' (timed out)')" >> "$dir/output.log"
  tail -n 25 "$dir/output.log"
}

# wheels brought for the offline machine (nvtx, metaworld, mujoco, gymnasium, ...), if any
[ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && pip install -q --no-index --no-deps .whl/*.whl

step install 150 "SODP_CUDA_ARCHS=${CAP:-90} pip install --no-build-isolation --no-deps -v . 2>&1 | grep -E 'nvcc|ptxas|error|Successfully' ; python -c 'import sodp_fast.ops._cuda as c; assert c.available(), c.import_error(); print(\"extension OK\")'"
step tests 150 "pytest -q -p no:cacheprovider -rs tests/test_cuda_ext.py tests/test_graphs.py tests/test_bench.py tests/test_ops_ddim_step.py tests/test_ops_ppo_loss.py tests/test_ops_film_epilogue.py"
step sampler 240 "python benchmarks/bench_sampler.py --presets default,tiny --batch-sizes 1,8,32,256,1024,4096 --variants eager,diffusers,compile-reduce-overhead,ours-triton,ours-cuda --min-time 0.5 --out \$STEP_DIR"
[ -f benchmarks/bench_ops.py ] && step ops 60 "python benchmarks/bench_ops.py --out \$STEP_DIR/bench_ops.json"
[ -f benchmarks/bench_pretrain.py ] && step pretrain 60 "python benchmarks/bench_pretrain.py --preset default --batch-size 256 --device cuda --steps 300"
# max-autotune compiles longest: after the main sweep, on the two target batch sizes only
step sampler-max-autotune 200 "python benchmarks/bench_sampler.py --presets default --batch-sizes 32,4096 --variants eager,compile-max-autotune,ours-cuda --min-time 0.5 --out \$STEP_DIR"
# these two need metaworld/mujoco wheels in .whl/ (the GPU machines have none); they fail fast without them
[ -f benchmarks/bench_rollout.py ] && step rollout 40 "python benchmarks/bench_rollout.py --task reach --envs 16 --chunks 60"
[ -f benchmarks/bench_finetune.py ] && step finetune 60 "python benchmarks/bench_finetune.py --task reach --presets default --num-envs 16 --workers 8 --threads 8 --groups 1,2 --device cuda --out \$STEP_DIR/finetune.json"

echo "session done in $(($(date +%s) - START))s; results under $OUT"
