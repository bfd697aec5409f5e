"""Optimiser and RNG state as flat tensors + JSON, so training state fits a safetensors checkpoint.

Checkpoints never hold pickles: an optimiser's ``state_dict`` is split into tensors (``<prefix>.state.<i>.<key>``,
e.g. Adam's exp_avg, exp_avg_sq and step) and JSON (param_groups and any non-tensor per-parameter values);
a ``torch.Generator``'s state is its uint8 byte tensor.
"""
from __future__ import annotations

import torch

from sodp_fast.errors import CheckpointError


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict, dict]:
    """(tensors, json_meta) describing ``optimizer.state_dict()``."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optim",
                        where: str = "checkpoint") -> None:
    """Inverse of :func:`optimizer_to_flat`; a mismatch with ``optimizer``'s parameters is a CheckpointError."""
    state: dict[int, dict] = {}
    head = prefix + ".state."
    for name, value in tensors.items():
        if name.startswith(head):
            idx, key = name[len(head):].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    own = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in own]:
        raise CheckpointError(f"{where}: optimiser state is for a different set of parameters")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{where}: optimiser state does not fit this model ({e})") from None


def generator_state(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state().clone()


def set_generator_state(generator: torch.Generator, state: torch.Tensor, where: str = "checkpoint") -> None:
    try:
        generator.set_state(state.to("cpu", torch.uint8).contiguous())
    except RuntimeError as e:
        raise CheckpointError(f"{where}: RNG state does not fit this device's generator ({e})") from None
