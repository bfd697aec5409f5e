"""Where a 10-step DDIM chain's CPU time goes (tiny and small U-Net, batch 32, one thread), per backend."""
import time
import torch
from torch.profiler import ProfilerActivity, profile
from sodp_fast.nn.unet import preset
from sodp_fast.ops import dispatch
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

torch.set_num_threads(1)
torch.manual_seed(0)
for name in ("tiny", "small"):
    p = DiffusionPlanner(PlannerConfig(unet=preset(name))).eval()
    obs = torch.randn(32, 2, 39)
    for backend in ("torch", "cpp"):
        dispatch.set_default_backend(backend)
        with torch.inference_mode():
            for _ in range(3):
                p.sample(obs)
            t0 = time.perf_counter()
            for _ in range(5):
                p.sample(obs)
            wall = (time.perf_counter() - t0) / 5
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    p.sample(obs)
        print(f"== {name} U-Net, batch 32, backend {backend}: {wall * 1e3:.1f} ms per chain unprofiled; "
              "profile of 5 chains (aten ops only: the cpp kernels are not listed)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
