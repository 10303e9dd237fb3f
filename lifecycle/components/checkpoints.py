"""Trainer checkpoints: which one a crashed run can resume from. Shared by every training stage
through `lifecycle.components.training.train`, and by stages that check for a resume themselves."""

from __future__ import annotations

from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def last_checkpoint(checkpoint_dir: Path, discard: bool = False, echo=None) -> Path | None:
    """The newest complete Trainer checkpoint under checkpoint_dir, or None.

    A kill while the Trainer writes a checkpoint leaves a directory that is missing files (it writes
    the weights, then the optimizer, then trainer_state.json) or holds a truncated one; the newest
    directory alone (transformers' get_last_checkpoint) would then fail every later run. With
    `discard`, incomplete checkpoints are removed, so the Trainer's rotation never counts them."""
    import re
    import shutil

    found = [d for d in checkpoint_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", d.name) and d.is_dir()]
    for d in sorted(found, key=lambda d: int(d.name.split("-")[1]), reverse=True):
        problem = checkpoint_problem(d)
        if problem is None:
            return d
        if echo is not None:
            echo(f"   {'discarding' if discard else 'skipping'} incomplete checkpoint {d.name}: {problem}")
        if discard:
            shutil.rmtree(d, ignore_errors=True)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or None: trainer_state.json parses, and the
    weights and the optimizer state open. Tensor data is not read (safetensors checks its header
    against the file size; torch.load with mmap needs the zip's directory, written last)."""
    import json

    import torch
    from safetensors import safe_open

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    index = next((path / n for n in WEIGHT_INDEXES if (path / n).is_file()), None)
    try:
        if index is not None:
            weights = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        else:
            weights = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
    except (OSError, ValueError, KeyError):
        return f"unreadable {index.name}"
    if not weights:
        return "no model weights"
    for f in [*weights, path / "optimizer.pt"]:
        if not f.is_file():
            return f"no {f.name}"
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    st.keys()
            else:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any failure to open means the file is unusable
            return f"unreadable {f.name} ({type(exc).__name__})"
    return None
