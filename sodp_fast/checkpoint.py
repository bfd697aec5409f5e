"""Checkpoints: safetensors tensors + a JSON header, written atomically, validated on load.

One ``.safetensors`` file holds the weights (and, for training checkpoints, EMA, optimiser moments, RNG state)
with the planner config in its metadata header. safetensors never executes code from the file, so a downloaded
checkpoint cannot run anything; a foreign, truncated or mismatched file becomes a one-line ``CheckpointError``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sodp_fast.atomic import atomic_write
from sodp_fast.errors import CheckpointError
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

FORMAT = "sodp_fast.checkpoint"
VERSION = 1
_MODEL_PREFIX = "planner."


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    header = {"format": FORMAT, "version": str(VERSION), "meta": json.dumps(meta)}
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=header))
    except SafetensorError as e:  # the Rust writer's I/O errors (a full disk, a read-only folder)
        raise CheckpointError(f"{path}: cannot write the checkpoint ({e})") from None


def load_tensors(path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a sodp_fast checkpoint (no '{FORMAT}' header)")
    if not str(header.get("version", "")).isdigit():
        raise CheckpointError(f"{path}: corrupt checkpoint header (version {header.get('version')!r})")
    if int(header["version"]) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format v{header['version']} is newer than this sodp_fast "
                              f"(v{VERSION})")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint header (its meta record is not an object)")
    return tensors, meta


def save_planner(path, planner: DiffusionPlanner, meta: dict | None = None,
                 extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Weights, normaliser stats (both in the state dict) and config; ``meta`` and ``extra_tensors`` carry
    whatever a training driver needs to resume (kept under their own names, never mixed with the weights)."""
    tensors = {_MODEL_PREFIX + k: v for k, v in planner.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        if k.startswith(_MODEL_PREFIX):
            raise ValueError(f"extra tensor name {k!r} collides with the planner's weights")
        tensors[k] = v
    save_tensors(path, tensors, {"planner_config": planner.config.to_dict(), **(meta or {})})


def planner_state(path, tensors: dict, meta: dict) -> tuple[PlannerConfig, dict[str, torch.Tensor]]:
    if not isinstance(meta.get("planner_config"), dict):
        raise CheckpointError(f"{path}: checkpoint has no planner config")
    try:
        config = PlannerConfig.from_dict(meta["planner_config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: invalid planner config ({e})") from None
    return config, {k[len(_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}


def check_state(path, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """The first missing, unexpected or mis-shaped tensor of ``state`` against ``expected``, as one line."""
    if missing := sorted(set(expected) - set(state)):
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected := sorted(set(state) - set(expected)):
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                  f"expected {tuple(v.shape)}")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise CheckpointError(f"{path}: tensor {k!r} contains NaN or inf")


def load_state_checked(path, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    check_state(path, module.state_dict(), state)
    module.load_state_dict(state)


def planner_from_state(path, tensors: dict, meta: dict, expect: dict | None = None) -> DiffusionPlanner:
    """The planner a checkpoint describes, with its weights. The model is first built on the ``meta`` device
    (no memory) and its shapes compared with the file's tensors, so a header that asks for an absurd model is
    refused before anything is allocated: a model that passes is no larger than the file."""
    config, state = planner_state(path, tensors, meta)
    for k, v in (expect or {}).items():
        if getattr(config, k) != v:
            raise CheckpointError(f"{path}: checkpoint has {k}={getattr(config, k)}, but {v} is needed here")
    try:
        with torch.device("meta"):
            shapes = DiffusionPlanner(config).state_dict()
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: invalid planner config ({e})") from None
    check_state(path, shapes, state)
    planner = DiffusionPlanner(config)
    planner.load_state_dict(state)
    return planner


def load_planner(path, device: str | torch.device = "cpu",
                 expect: dict | None = None) -> tuple[DiffusionPlanner, dict, dict[str, torch.Tensor]]:
    """Returns (planner, meta, tensors). ``expect`` (e.g. ``{"obs_dim": 39, "action_dim": 4}``) names config
    fields the caller needs; a checkpoint that differs is rejected with the field named."""
    tensors, meta = load_tensors(path)
    return planner_from_state(path, tensors, meta, expect).to(device), meta, tensors
