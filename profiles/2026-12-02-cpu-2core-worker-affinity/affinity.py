"""Worker CPU affinity vs none: fine-tune env steps/s (tiny, 32 envs, 2 workers, 2 torch threads) and the raw env
rate, interleaved A/B so drift hits both. Uses benchmarks/bench_finetune.py's measurement functions."""
import json, os, sys, time
sys.path.insert(0, "benchmarks")
import torch
import bench_finetune as bf
from sodp_fast.envs import workers

real_start = workers.ChunkVecEnv._start
def pinned_start(self, w):
    real_start(self, w)
    os.sched_setaffinity(self._procs[w].pid, {w % os.cpu_count()})

class A:  # bench_finetune's args
    task, episode_steps, iterations, grad_steps, batch_size, device, workers = "reach", 200, 2, 10, 256, "auto", 2

def main():
    torch.set_num_threads(2)
    rows = []
    for rep in range(3):
        for pin in (False, True):
            workers.ChunkVecEnv._start = pinned_start if pin else real_start
            raw = bf.raw_env_rate("reach", 32, 2, 200, 2)
            ft = bf.finetune_rate(A, "tiny", 32, 1)
            row = {"rep": rep, "pinned": pin, "raw": round(raw), "finetune": ft["env_steps_per_s"],
                   "share": round(ft["env_steps_per_s"] / raw, 3), **{k: v for k, v in ft.items() if k.startswith("time_")}}
            rows.append(row); print(json.dumps(row), flush=True)
    for pin in (False, True):
        sel = [r for r in rows if r["pinned"] == pin]
        print(f"pinned={pin}: raw {sum(r['raw'] for r in sel)/3:.0f}, finetune {sum(r['finetune'] for r in sel)/3:.0f}, "
              f"share {sum(r['share'] for r in sel)/3:.3f}")


if __name__ == "__main__":
    main()
