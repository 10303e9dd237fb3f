"""Scale-out: `lifecycle run` under `torchrun --nproc_per_node=2` (DDP, gloo on CPU): the pretrain and
adapt stages train on both ranks as one job and produce one artifact each (rank 0 writes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lifecycle.artifact import Artifact

NEWS = Path(__file__).parent / "data" / "news_tiny.jsonl"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN = {"max_steps": 4, "batch_size": 4, "lr": 2e-3, "logging_steps": 2, "save_steps": 2}


def pipeline_file(tmp_path: Path, adapt: bool = True, train: dict = TRAIN) -> Path:
    model = {"preset": "bert-tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64},
             "tokenizer": {"vocab_size": 400}}
    text = {"format": "jsonl", "path": str(NEWS), "label_field": None, "split": {"validation": 0.2}}
    stages = [{"kind": "pretrain", "data": "text", "model": model, "block_size": 32, "train": train}]
    if adapt:
        stages.append({"kind": "adapt", "data": "text", "block_size": 32, "train": train})
    raw = {"name": "ddp", "seed": 0, "data": {"text": text}, "stages": stages}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    return subprocess.run(TORCHRUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def check_one_artifact_per_stage(run_dir: Path, names=("adapt", "pretrain"), steps: int = 4, batch: int = 4) -> None:
    stage_dirs = [p.name for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(("pretrain", "adapt"))]
    assert sorted(stage_dirs) == sorted(names)  # no rank-1 leftovers beside the artifacts
    for name in names:
        art = Artifact.load(run_dir / name)  # verifies every file's hash
        assert art.metrics["world_size"] == 2
        # optimizer steps x blocks per device x 2 devices x 32 tokens: the two ranks split the batches
        assert art.metrics["train_tokens"] == steps * batch * 2 * 32
        assert "model.safetensors" in art.manifest["files"]
    assert not list(run_dir.glob("*.tmp*")) and not any((run_dir / ".scratch").iterdir())


@pytest.mark.slow  # two processes start torch, transformers and gloo: ~40 s on 2 busy cores
def test_lifecycle_run_under_torchrun(tmp_path):
    (tmp_path / "cli.py").write_text("import sys; from lifecycle.cli import main; sys.exit(main(sys.argv[1:]))")
    result = torchrun(["cli.py", "run", str(pipeline_file(tmp_path)), "--workdir", str(tmp_path / "runs")], tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    run_dir = tmp_path / "runs" / "ddp"
    check_one_artifact_per_stage(run_dir)
    history = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["details"]["log_history"]
    assert [r["step"] for r in history if "loss" in r] == [2, 4]
    assert json.loads((run_dir / "report.json").read_text())["passed"]


def test_one_stage_two_ranks_one_step(tmp_path):
    """The smallest real torchrun job, in the default suite: two processes, gloo, one pretrain stage of
    one optimizer step; both ranks train (world_size 2, tokens of both) and one artifact is sealed."""
    (tmp_path / "cli.py").write_text("import sys; from lifecycle.cli import main; sys.exit(main(sys.argv[1:]))")
    train = {"max_steps": 1, "batch_size": 2, "lr": 2e-3, "logging_steps": 1, "save_steps": 10, "eval_steps": 10}
    path = pipeline_file(tmp_path, adapt=False, train=train)
    result = torchrun(["cli.py", "run", str(path), "--workdir", str(tmp_path / "runs")], tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    check_one_artifact_per_stage(tmp_path / "runs" / "ddp", names=("pretrain",), steps=1, batch=2)
