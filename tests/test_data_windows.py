import numpy as np
import pytest
import torch

from sodp_fast.data.format import load_dataset, write_manifest, write_task
from sodp_fast.data.windows import build_window_index, concat_tasks, gather_windows, window_tables
from test_data_format import make_task


def reference_windows(obs, act, ends, to, horizon, pad_before, pad_after):
    """Explicit padding, the way Diffusion Policy's SequenceSampler does it."""
    out_o, out_a, begin = [], [], 0
    for end in ends:
        o, a = obs[begin:end], act[begin:end]
        o = np.concatenate([np.repeat(o[:1], pad_before, 0), o, np.repeat(o[-1:], pad_after, 0)])
        a = np.concatenate([np.repeat(a[:1], pad_before, 0), a, np.repeat(a[-1:], pad_after, 0)])
        for s in range(len(o) - horizon + 1):
            out_o.append(o[s:s + to])
            out_a.append(a[s:s + horizon])
        begin = end
    return np.array(out_o), np.array(out_a)


@pytest.mark.parametrize("ends,to,horizon,pad_before,pad_after", [
    ([5, 9, 20], 2, 4, 1, 3), ([12, 30], 2, 12, 1, 7), ([3, 6], 3, 5, 2, 0)])
def test_windows_match_explicit_padding(ends, to, horizon, pad_before, pad_after):
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(ends[-1], 3)), rng.normal(size=(ends[-1], 2))
    index = build_window_index(np.array(ends), to, horizon, pad_before, pad_after)
    ref_o, ref_a = reference_windows(obs, act, ends, to, horizon, pad_before, pad_after)
    rows = np.arange(len(index))
    o, a = gather_windows(obs, act, index, rows, to, horizon)
    assert len(index) == len(ref_o) and np.array_equal(o, ref_o) and np.array_equal(a, ref_a)
    obs_idx, act_idx = window_tables(index, to, horizon)
    assert np.array_equal(obs[obs_idx], ref_o) and np.array_equal(act[act_idx], ref_a)
    t = [torch.from_numpy(x) for x in (obs, act, index)]
    perm = np.random.default_rng(1).permutation(len(index))[:7]
    to_, ta_ = gather_windows(*t, torch.from_numpy(perm), to, horizon)
    assert np.array_equal(to_.numpy(), ref_o[perm]) and np.array_equal(ta_.numpy(), ref_a[perm])


def test_default_padding_is_diffusion_policy_and_short_episodes_are_skipped():
    index = build_window_index(np.array([20, 22]), 2, 12, action_steps=8)
    assert index[0].tolist() == [-1, 0, 20]                    # pad_before = To - 1
    assert index[index[:, 1] == 0][-1, 0] == 20 - 12 + 7       # pad_after = Ta - 1
    assert len(build_window_index(np.array([2]), 2, 12, 0, 0)) == 0


def test_concat_tasks_never_crosses_tasks(tmp_path):
    write_task(tmp_path, make_task("reach-v3", (6, 4), seed=1))
    write_task(tmp_path, make_task("push-v3", (7,), seed=2))
    write_manifest(tmp_path)
    ds = load_dataset(tmp_path)
    obs, act, obs_idx, act_idx = concat_tasks(ds, n_obs_steps=2, horizon=4, action_steps=2)
    assert obs.shape == (17, 39) and act.shape == (17, 4) and obs_idx.dtype == np.int64
    assert list(ds.tasks) == ["push-v3", "reach-v3"]  # manifest order: sorted folder names
    task_of = np.repeat([0, 1], [7, 10])
    assert np.all(task_of[act_idx] == task_of[act_idx[:, :1]])
    assert np.all(act_idx.max(1) - act_idx.min(1) <= 3)
    assert np.array_equal(obs[obs_idx[0]], np.repeat(ds.tasks[list(ds.tasks)[0]].observations[:1], 2, 0))
