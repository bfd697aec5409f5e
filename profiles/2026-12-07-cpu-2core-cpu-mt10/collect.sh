#!/usr/bin/env bash
# Copy a cpu-mt10 run folder's small artefacts here (no data, no fine-tuned models; the one pre-trained planner).
#   bash collect.sh /work/runs/mt10 /work/runs/mt10.log
set -euo pipefail
run=$1 log=$2 here=$(cd "$(dirname "$0")" && pwd)
cd "$run"
cp repro.json command.txt machine.txt "$here/"
for f in results.json results.md curves.png ablation.png; do [ -e "$f" ] && cp "$f" "$here/"; done
mkdir -p "$here/eval" "$here/stages" "$here/runs" "$here/pretrain"
cp eval/*.json "$here/eval/"; cp stages/*.json "$here/stages/"
cp pretrain/config.json pretrain/metrics.jsonl pretrain/model.safetensors "$here/pretrain/"
for d in finetune/*/; do
  [ -e "$d/metrics.jsonl" ] || continue
  mkdir -p "$here/runs/$(basename "$d")"; cp "$d/config.json" "$d/metrics.jsonl" "$here/runs/$(basename "$d")/"
done
cp "$log" "$here/raw.log"
python3 -P "$here/diagnostics.py" "$run" > "$here/diagnostics.md"
