#!/bin/bash
# usage: run.sh NAME TASK SEED ENV_STEPS EXTRA-ARGS...  (the cpu-mt10 fine-tuning settings unless EXTRA-ARGS says otherwise)
name=$1; task=$2; seed=$3; steps=$4; shift 4
out=/work/budget/runs/$name-$task-s$seed
[ -f $out/done ] && exit 0
rm -rf $out
OMP_NUM_THREADS=2 sodp finetune --ckpt /work/runs/mt10/pretrain/model.safetensors --task $task --env-steps $steps \
  --num-envs 10 --num-workers 2 --grad-steps 30 --n-init 10 --lr 1e-5 --reg-weight 10 --eval-every 40000 \
  --eval-episodes 50 --seed $seed --out $out --no-progress "$@" > /work/budget/logs/$name-$task-s$seed.log 2>&1 \
  && touch $out/done
