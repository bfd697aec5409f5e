#!/bin/bash
# Held-out check of batch.sh's finding on study tasks, seed 0, 4x the cpu-mt10 budget: two with room to rise
# (dial-turn 8 %, sweep-into 37 % pre-trained) and one the planner cannot do (push, 4 %: does a success appear?).
cd "$(dirname "$0")"
for task in dial-turn-v3 sweep-into-v3 push-v3; do
  ./run.sh bc_160k $task 0 160000
done
