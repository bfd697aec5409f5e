#!/bin/bash
# Budget study (issue 13): does SODP's gain keep growing past the cpu-mt10 budget (40 k env steps, 30 gradient
# steps per iteration), and is it the env steps or the gradient steps? Dev tasks outside the study.
cd "$(dirname "$0")"
for task in reach-wall-v3 window-close-v3; do
  ./run.sh bc_160k $task 0 160000
  ./run.sh bc-only_160k $task 0 160000 --ppo-weight 0
  ./run.sh bc_40k_gs100 $task 0 40000 --grad-steps 100
done
