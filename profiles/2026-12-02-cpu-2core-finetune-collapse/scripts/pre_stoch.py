from sodp_fast.checkpoint import load_planner
from sodp_fast.eval import evaluate
import sys
if __name__ == "__main__":
    p, _, _ = load_planner(sys.argv[1])
    for t in sys.argv[2:]:
        print(t, "det", evaluate(p, t, 50, seed=0, num_envs=10, num_workers=2)["success_rate"],
              "stoch", evaluate(p, t, 50, seed=0, num_envs=10, num_workers=2, deterministic=False)["success_rate"], flush=True)
