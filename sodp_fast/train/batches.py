"""Training batches drawn on the training device from window index tables (no DataLoader).

Alignment (paper Eq. 6): a sample at current step t pairs the observations s_{t-To+1..t} with the actions
a_t..a_{t+Tp-1}; rollouts execute the first Ta of them (``DiffusionPlanner.executed_actions``).  The data
package's windows follow Diffusion Policy's SequenceSampler, whose action window starts at t-To+1 instead.
We therefore index windows of length To-1+Tp (starting at t-To+1), take the first To observations and the
last Tp actions, i.e. the action index table is offset by To-1.  Padding follows Diffusion Policy: the
history may reach To-1 steps before the episode (repeating its first step, as rollouts do) and the plan Ta-1
steps past its end (repeating the last action).
"""
from __future__ import annotations

import numpy as np
import torch

from sodp_fast.data.windows import build_window_index, gather_windows


class WindowBatches:
    """All transitions and the window index held on one device; ``sample`` gathers a batch there."""

    def __init__(self, obs: np.ndarray, actions: np.ndarray, episode_ends: np.ndarray, n_obs_steps: int,
                 horizon: int, n_action_steps: int, device: torch.device | str = "cpu"):
        self.n_obs_steps, self.horizon = n_obs_steps, horizon
        self.span = n_obs_steps - 1 + horizon
        index = build_window_index(episode_ends, n_obs_steps, self.span, pad_before=n_obs_steps - 1,
                                   pad_after=n_action_steps - 1)
        self.device = torch.device(device)
        self.obs = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        self.actions = torch.as_tensor(np.asarray(actions, np.float32), device=self.device)
        self.index = torch.as_tensor(index, device=self.device)

    @staticmethod
    def nbytes(num_transitions: int, obs_dim: int, action_dim: int) -> int:
        """Device memory needed (windows ≈ transitions), to decide whether the dataset fits."""
        return num_transitions * (4 * (obs_dim + action_dim) + 24)

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(obs_hist [B, To, D], actions [B, Tp, A]) of windows ``rows``."""
        obs, act = gather_windows(self.obs, self.actions, self.index, rows, self.n_obs_steps, self.span)
        return obs, act[:, self.n_obs_steps - 1:]

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform windows (with replacement) drawn from ``generator``, which lives on ``self.device``."""
        rows = torch.randint(0, len(self.index), (batch_size,), device=self.device, generator=generator)
        return self.gather(rows)
