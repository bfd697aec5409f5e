"""Straight toy run snapshotting the run folder after every checkpoint; then resume each snapshot in a fresh
process and compare the final model with the straight run's (SODP_BACKEND from the environment)."""
import sys, hashlib, shutil, subprocess
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_finetune import toy_cfg, ITER
from toy_env import make_toy_env, pretrain_broad
from sodp_fast.checkpoint import save_planner, load_tensors
from sodp_fast.train import finetune as F

def digest(p):
    t, _ = load_tensors(p)
    return hashlib.sha1(b"".join(t[k].numpy().tobytes() for k in sorted(t))).hexdigest()[:12]

out = Path(sys.argv[1]); mode = sys.argv[2]
ckpt = out / "pre.safetensors"
if mode == "straight":
    out.mkdir(parents=True, exist_ok=True)
    save_planner(ckpt, pretrain_broad(steps=200))
    save, n = F.Finetuner.save, [0]
    def snap_save(self, run):
        save(self, run)
        n[0] += 1
        shutil.copytree(run.path, out / f"snap{n[0]}", ignore=shutil.ignore_patterns(".lock"))
    F.Finetuner.save = snap_save
    F.finetune(toy_cfg(out / "straight", str(ckpt), env_steps=7 * ITER, ckpt_every=1), make_env=make_toy_env)
    print("straight", digest(out / "straight" / "model.safetensors"), flush=True)
    for k in range(1, n[0]):
        subprocess.run([sys.executable, __file__, str(out), "resume", str(k)], check=True)
else:
    run = out / f"snap{sys.argv[3]}"
    (run / "model.safetensors").unlink(missing_ok=True)
    F.finetune(toy_cfg(run, str(ckpt), env_steps=7 * ITER, ckpt_every=1), resume=True, make_env=make_toy_env)
    print("resumed from", sys.argv[3], digest(run / "model.safetensors"), flush=True)
