"""``sodp info``: versions and which fast backends this install has."""
from __future__ import annotations

import platform

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show versions and available fast backends")
    p.set_defaults(func=run)


def run(args) -> int:
    import sodp_fast
    from sodp_fast.ops.dispatch import describe_backends

    print(f"sodp_fast {sodp_fast.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}")
    for name, state in describe_backends().items():
        print(f"  backend {name:6s} {state}")
    return 0
