#!/bin/bash
# usage: run.sh name task seed extra-args...
source /work/venv/bin/activate
name=$1; task=$2; seed=$3; shift 3
out=/work/tune/runs/$name-$task-s$seed
[ -f $out/done ] && exit 0
rm -rf $out
sodp finetune --ckpt /work/runs/mt10/pretrain/model.safetensors --task $task --env-steps 40000 --num-envs 10 \
  --num-workers 2 --grad-steps 30 --n-init 10 --eval-every 20000 --eval-episodes 50 --seed $seed --out $out \
  --no-progress "$@" > /work/tune/logs/$name-$task-s$seed.log 2>&1 && touch $out/done
