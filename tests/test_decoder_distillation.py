"""distill under `task: {type: generation}`: token-level KD of a decoder (lifecycle.workloads.decoders.distillation).
The student keeps every other teacher layer, and the KD term moves it toward the teacher: after the same
steps on the same data, KL(teacher || student) is lower with alpha = 0.9 than with the LM loss alone."""

import pytest
from test_generation import generation_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)

STEPS = {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "logging_steps": 10, "save_steps": 20}


def distill_stage(name: str, alpha: float) -> dict:
    return {"kind": "distill", "name": name, "parent": "pretrain", "alpha": alpha, "temperature": 2.0,
            "collapse_min": None, "train": STEPS, "latency": {"runs": 3, "warmup": 1}, "latency_rounds": 1}


def test_kd_moves_a_decoder_student_toward_its_teacher(tmp_path):
    import json

    from lifecycle import pipeline as runner
    from lifecycle.config import build

    raw = generation_pipeline(distill_stage("kd", 0.9), distill_stage("lm_only", 0.0))
    raw["stages"][0]["model"]["overrides"]["n_layer"] = 4  # a 4-layer teacher: the student keeps 2
    outcomes = runner.run(build(raw, base_dir=tmp_path), workdir=tmp_path, echo=lambda *a: None)
    teacher, kd, lm_only = (o.artifact for o in outcomes)
    assert kd.manifest["details"]["student_layers"] == [0, 3]
    assert json.loads((kd.path / "config.json").read_text())["n_layer"] == 2
    assert kd.metrics["compression"] > 1.3 and kd.metrics["params_total"] < kd.metrics["teacher_params_total"]
    assert kd.metrics["teacher_perplexity"] == lm_only.metrics["teacher_perplexity"]  # the same teacher and split
    assert kd.metrics["perplexity_ratio"] == pytest.approx(kd.metrics["perplexity"] / kd.metrics["teacher_perplexity"])
    assert kd.metrics["kl_to_teacher"] < 0.8 * lm_only.metrics["kl_to_teacher"]
    assert kd.manifest["details"]["loss_on"] == "response tokens"


def test_decoder_distill_refuses_what_it_cannot_honour(tmp_path):
    from lifecycle import LifecycleError
    from lifecycle.config import build

    for extra, field in (({"hidden_weight": 0.5}, "hidden_weight"), ({"metric": "f1_macro"}, "metric"),
                         ({"collapse_min": 0.2}, "collapse_min")):
        stage = {**distill_stage("kd", 0.5), **extra}
        with pytest.raises((LifecycleError, ValueError), match=field):
            build(generation_pipeline(stage), base_dir=tmp_path)
