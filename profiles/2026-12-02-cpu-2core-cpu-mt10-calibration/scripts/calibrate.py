"""Pre-training capacity calibration for cpu-mt10: pre-train a U-Net config on the study's data with the preset's
schedule, then evaluate it on the ten tasks (50 episodes, seed 0), as the study's eval-pretrained stage does."""
import json, os, sys, time
from pathlib import Path
import torch
from sodp_fast.nn import unet
from sodp_fast.train.pretrain import PretrainConfig, pretrain, MODEL_FILE
from sodp_fast.checkpoint import load_planner
from sodp_fast.eval import evaluate_tasks
from sodp_fast.envs.tasks import resolve_tasks

def main():
    name, dims, kernel, groups, embed, steps = sys.argv[1], tuple(map(int, sys.argv[2].split(","))), int(sys.argv[3]), \
        int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    unet.PRESETS["tiny"] = unet.PRESETS[name] = unet.UNetConfig(down_dims=dims, kernel_size=kernel, n_groups=groups, step_embed_dim=embed)
    out = Path(f"/work/exp/cal/{name}")
    t0 = time.time()
    cfg = PretrainConfig(data=os.environ.get("CAL_DATA", "/work/runs/cpu-mt10/data"), out=str(out), steps=steps, batch_size=256, lr=1e-3, preset="tiny",  # patched to the config under test (choices are fixed at import)
                        
                         seed=0, ckpt_every=2000, log_every=100, device="cpu", progress=True)
    pretrain(cfg, resume=(out / "train_state.safetensors").exists())
    t1 = time.time()
    planner, _, _ = load_planner(out / MODEL_FILE, torch.device("cpu"))
    res = evaluate_tasks(planner, resolve_tasks("paper-mt10"), 50, (0,))
    t2 = time.time()
    rates = {t: r["success_mean"] for t, r in res["tasks"].items()}
    summary = {"name": name, "unet": unet.PRESETS[name].__dict__ if hasattr(unet.PRESETS[name], "__dict__") else str(unet.PRESETS[name]),
               "params": sum(p.numel() for p in planner.model.parameters()), "steps": steps,
               "pretrain_s": round(t1 - t0), "eval_s": round(t2 - t1), "success": rates,
               "mean": sum(rates.values()) / len(rates)}
    print(json.dumps(summary, default=str))
    (out / "calibration.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
