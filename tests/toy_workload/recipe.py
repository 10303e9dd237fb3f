"""The toy's finetune recipe: a two-layer perceptron trained with Adam on the task's train split."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from toy_workload.task import TASK

WIDTH, HIDDEN = 3, 16


class Perceptron(torch.nn.Module):
    def __init__(self, width: int = WIDTH, hidden: int = HIDDEN):
        super().__init__()
        self.width = width
        self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))

    def forward(self, features):
        return self.net(features)


def load(src: Path) -> Perceptron:
    from safetensors.torch import load_file

    model = Perceptron(**json.loads((src / "toy.json").read_text()))
    model.load_state_dict(load_file(src / "model.safetensors"))
    return model.eval()


def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    from safetensors.torch import save_file

    torch.manual_seed(ctx.seed)
    splits = ctx.task_data().splits
    x = torch.tensor(TASK.inputs(splits["train"]), dtype=torch.float32)
    y = torch.tensor(splits["train"]["label"])
    model = Perceptron()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    steps = cfg.train.max_steps or 100
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    save_file(model.state_dict(), ctx.out_dir / "model.safetensors")
    (ctx.out_dir / "toy.json").write_text(json.dumps({"width": WIDTH, "hidden": HIDDEN}))
    metrics = {"train_steps": steps, "params_total": sum(p.numel() for p in model.parameters())}
    for split, prefix in (("test", ""), ("validation", "val_")):
        with torch.no_grad():
            predicted = model(torch.tensor(TASK.inputs(splits[split]), dtype=torch.float32)).argmax(-1)
        right = int((predicted == torch.tensor(splits[split]["label"])).sum())
        metrics[f"{prefix}accuracy"] = right / len(predicted)  # as the task scores it: no float32 rounding
    return metrics, {"labels": ["negative", "positive"]}
