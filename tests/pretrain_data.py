"""Small synthetic datasets in the on-disk format, fast to write and learnable: actions are a smooth
function of the observation, so a tiny planner's denoising loss drops well within a few hundred steps."""
import numpy as np

from sodp_fast.data.format import TaskData, write_manifest, write_task


def synthetic_task(name, episodes=4, length=60, obs_dim=39, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(obs_dim, 4)) / np.sqrt(obs_dim)
    obs = np.cumsum(rng.normal(scale=0.3, size=(episodes * length, obs_dim)), 0)
    acts = np.tanh(np.sin(obs) @ w * 2)
    ends = np.arange(1, episodes + 1, dtype=np.int64) * length
    return TaskData(name, obs.astype(np.float32), acts.astype(np.float32), rng.random(len(obs)).astype(np.float32),
                    ends, np.zeros(episodes, bool))


def write_dataset(root, tasks=("reach-v3", "push-v3"), obs_dim=39, **kw):
    for i, t in enumerate(tasks):
        write_task(root, synthetic_task(t, obs_dim=obs_dim, seed=i, **kw), {"source": "test"})
    write_manifest(root, {"source": "test"})
    return root
