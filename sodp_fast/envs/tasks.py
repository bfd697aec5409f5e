"""Meta-World v3 task names and the named task sets used by SODP.  Names are accepted with or without ``-v3``
(``-v2`` names of older datasets map to ``-v3``), so command lines stay short and old data stays importable."""
from __future__ import annotations

import difflib

from sodp_fast.errors import SodpError

MT50: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3",
    "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3",
    "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3",
    "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3",
    "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)

# Meta-World's own MT10 (metaworld.MT10 train classes, in its order).
MT10: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)

# The ten tasks of the paper's Table 6, which is not Meta-World's MT10.
PAPER_MT10: tuple[str, ...] = (
    "basketball-v3", "button-press-v3", "dial-turn-v3", "drawer-close-v3", "peg-insert-side-v3",
    "pick-place-v3", "push-v3", "reach-v3", "sweep-into-v3", "window-open-v3",
)

TASK_SETS: dict[str, tuple[str, ...]] = {"mt10": MT10, "paper-mt10": PAPER_MT10, "mt50": MT50}

# Difficulty classes of Seo et al. (2023), which the paper uses to split MT50; the data generator
# calibrates its noise schedule per class.
DIFFICULTY: dict[str, str] = {
    **{t + "-v3": "easy" for t in (
        "button-press", "button-press-topdown", "button-press-topdown-wall", "button-press-wall",
        "coffee-button", "dial-turn", "door-close", "door-lock", "door-open", "door-unlock", "drawer-close",
        "drawer-open", "faucet-close", "faucet-open", "handle-press", "handle-press-side", "handle-pull",
        "handle-pull-side", "lever-pull", "plate-slide", "plate-slide-back", "plate-slide-back-side",
        "plate-slide-side", "reach", "reach-wall", "window-close", "window-open", "peg-unplug-side")},
    **{t + "-v3": "medium" for t in (
        "basketball", "bin-picking", "box-close", "coffee-pull", "coffee-push", "hammer", "peg-insert-side",
        "push-wall", "soccer", "sweep", "sweep-into")},
    **{t + "-v3": "hard" for t in (
        "assembly", "hand-insert", "pick-out-of-hole", "pick-place", "push", "push-back")},
    **{t + "-v3": "very-hard" for t in (
        "shelf-place", "disassemble", "stick-pull", "stick-push", "pick-place-wall")},
}


class UnknownTaskError(SodpError, ValueError):
    """A task or task-set name that is not Meta-World v3."""


def canonical_task(name: str) -> str:
    """Map ``reach``, ``reach-v2`` or ``Reach-V3`` to ``reach-v3``; raise with the closest name otherwise."""
    base = name.strip().lower().removesuffix("-v3").removesuffix("-v2")
    if base + "-v3" in MT50:
        return base + "-v3"
    close = difflib.get_close_matches(base, [t[:-3] for t in MT50] + list(TASK_SETS), n=1, cutoff=0.0)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownTaskError(f"unknown Meta-World task '{name}'{hint}")


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Expand set names (mt10, paper-mt10, mt50), comma lists and short names into unique -v3 names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for key in filter(None, (item.strip().lower() for item in items)):
        names = TASK_SETS[key] if key in TASK_SETS else (canonical_task(key),)
        out.extend(n for n in names if n not in out)
    if not out:
        raise UnknownTaskError(f"no task names in '{spec}'")
    return out
