"""Rank awareness for runs under `torchrun` / `accelerate launch`.

Training stages run on every rank (the Trainer does DDP); everything that writes (artifacts, reports)
happens on rank 0, with a barrier so the other ranks read a sealed artifact. Outside a launcher these
are no-ops and torch is never imported here.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def barrier() -> None:
    if world_size() <= 1:
        return
    from accelerate import PartialState  # initialises the process group from the launcher's env (gloo on CPU)

    PartialState().wait_for_everyone()
