#!/bin/bash
# A second seed of the 160 k bc runs on the four tasks with room to rise (batch.sh, batch2.sh).
cd "$(dirname "$0")"
for task in reach-wall-v3 dial-turn-v3 window-close-v3 sweep-into-v3; do
  ./run.sh bc_160k $task 1 160000
done
