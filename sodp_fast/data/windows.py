"""Training windows (To-observation history, Tp-action sequence) over all tasks of a dataset.

Windows follow Diffusion Policy's SequenceSampler: in an episode of length L a window may start anywhere from
``-pad_before`` to ``L - horizon + pad_after``; positions outside the episode repeat its first or last step, i.e.
every index is clamped into ``[episode_begin, episode_end - 1]``.  So a window is three integers (start, begin,
end; 24 B, ``build_window_index``), gathered by index arithmetic on numpy or torch on any device (pre-training
keeps the dataset on the GPU).  ``window_tables`` expands them to ``obs_idx [W, To]`` and ``act_idx [W, Tp]``:
simpler, but (To + Tp) * 8 B per window (≈1.1 GB for 10 M windows at To=2, Tp=12).
"""
from __future__ import annotations

import numpy as np

from sodp_fast.data.format import DataFormatError, MultiTaskDataset


def build_window_index(episode_ends: np.ndarray, n_obs_steps: int, horizon: int, pad_before: int | None = None,
                       pad_after: int | None = None, action_steps: int = 8) -> np.ndarray:
    """``[W, 3]`` int64 rows (start, episode_begin, episode_end) in the concatenated arrays; by default, as in
    Diffusion Policy, ``pad_before = n_obs_steps - 1`` and ``pad_after = action_steps - 1``."""
    pad_before = n_obs_steps - 1 if pad_before is None else pad_before
    pad_after = action_steps - 1 if pad_after is None else pad_after
    ends = np.asarray(episode_ends, np.int64)
    begins = np.concatenate([[0], ends[:-1]])
    counts = np.maximum(ends - begins - horizon + pad_after + pad_before + 1, 0)  # relative starts -pad_before..
    ep = np.repeat(np.arange(len(ends)), counts)  # the episode of each window
    starts = np.arange(len(ep)) - np.repeat(np.cumsum(counts) - counts - begins + pad_before, counts)
    return np.stack([starts, begins[ep], ends[ep]], 1)


def _positions(w, horizon: int):
    """[W, Tp] clamped positions of the windows ``w`` (numpy, or torch on any device)."""
    if type(w).__module__.startswith("torch"):
        import torch
        offsets = torch.arange(horizon, device=w.device, dtype=w.dtype)[None]
    else:
        offsets = np.arange(horizon, dtype=w.dtype)[None]
    return (w[:, :1] + offsets).clip(w[:, 1:2], w[:, 2:3] - 1)


def gather_windows(obs, actions, index, rows, n_obs_steps: int, horizon: int):
    """Windows ``rows`` of ``index`` (all numpy, or all torch on one device): obs_hist [B, To, D], act [B, Tp, A]."""
    pos = _positions(index[rows], horizon)
    return obs[pos[:, :n_obs_steps]], actions[pos]


def window_tables(index: np.ndarray, n_obs_steps: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window clamped index tables: ``obs_idx [W, To]``, ``act_idx [W, Tp]`` (int64)."""
    pos = _positions(index, horizon)
    return np.ascontiguousarray(pos[:, :n_obs_steps]), pos


def concat_tasks(dataset: MultiTaskDataset, n_obs_steps: int = 2, horizon: int = 12, pad_before: int | None = None,
                 pad_after: int | None = None, action_steps: int = 8):
    """All tasks concatenated: (obs [T, D] float32, actions [T, A] float32, obs_idx [W, To], act_idx [W, Tp]);
    windows never cross an episode or task boundary."""
    dims = {(d.observations.shape[1], d.actions.shape[1]) for d in dataset.tasks.values()}
    if len(dims) != 1:
        raise DataFormatError(f"{dataset.root}: tasks have mixed observation/action dims {sorted(dims)}")
    obs, actions = (np.concatenate([getattr(d, k) for d in dataset.tasks.values()]).astype(np.float32, copy=False)
                    for k in ("observations", "actions"))
    index = build_window_index(concat_episode_ends(dataset)[0], n_obs_steps, horizon, pad_before, pad_after,
                               action_steps)
    return obs, actions, *window_tables(index, n_obs_steps, horizon)


def concat_episode_ends(dataset: MultiTaskDataset) -> tuple[np.ndarray, np.ndarray]:
    """Episode ends of all tasks in concatenation order, and the task index of every transition."""
    sizes = [d.num_transitions for d in dataset.tasks.values()]
    offsets = np.cumsum([0] + sizes[:-1], dtype=np.int64)
    ends = np.concatenate([np.asarray(d.episode_ends) + o for d, o in zip(dataset.tasks.values(), offsets)])
    return ends, np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
