#!/usr/bin/env bash
# Stochastic (eta=1) evaluation of the pre-trained and fine-tuned checkpoints of a cpu-small repro run.
set -euo pipefail
RUN=$1
eval_one() {  # name ckpt task
  OMP_NUM_THREADS=1 PYTHONPATH=/work/main python -m sodp_fast.cli eval --ckpt "$2" --tasks "$3" --episodes 50 \
    --seeds 0 --workers 0 --stochastic --out "$RUN/eval-stochastic/$1"
}
for t in button-press-v3 sweep-into-v3 push-v3; do eval_one "pretrained-$t" "$RUN/pretrain/model.safetensors" "$t"; done
for d in "$RUN"/finetune/*/; do n=$(basename "$d"); eval_one "$n" "$d/model.safetensors" "${n%-*-s0}"; done
