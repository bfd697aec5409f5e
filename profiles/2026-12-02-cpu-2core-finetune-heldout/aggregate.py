"""Held-out check of the fine-tuning fix: success at step 0 and after 50k env steps, per variant/task/seed."""
import json, statistics as st, sys
from pathlib import Path
root = Path(__file__).parent
runs = root / "raw"
rows = {}
for d in sorted(runs.glob("*-*-[0-9]")):
    if not (d / "summary.json").exists():
        continue
    v, rest = d.name.split("-", 1); task, seed = rest.rsplit("-", 1)
    evals = [json.loads(l) for l in open(d / "metrics.jsonl") if "eval_success_rate" in l]
    rows.setdefault((task, v), []).append((int(seed), evals[0]["eval_success_rate"], evals[-1]["eval_success_rate"]))
out = {}
print("| task | variant | seeds | before | after (50 k env steps) | change, mean ± std over seeds |\n|---|---|---|---|---|---|")
for (task, v), r in sorted(rows.items()):
    r.sort(); d = [b - a for _, a, b in r]
    sd = st.stdev(d) if len(d) > 1 else float("nan")
    print(f"| {task} | {v} | {','.join(str(s) for s,_,_ in r)} | {' / '.join(f'{a:.2f}' for _,a,_ in r)} | "
          f"{' / '.join(f'{b:.2f}' for _,_,b in r)} | {st.mean(d):+.2f} ± {sd:.2f} |")
    out[f"{task}/{v}"] = [{"seed": s, "before": a, "after": b} for s, a, b in r]
json.dump(out, open(root / "results.json", "w"), indent=1)
