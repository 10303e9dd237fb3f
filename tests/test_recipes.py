"""The recipe table (lifecycle.workloads): every training stage finds its run function by (stage, inputs kind,
objective or answers kind); `lifecycle validate` knows exactly which metrics that recipe reports, and a run
stops a recipe that reports one it did not declare."""

import importlib
import json

import pytest
from conftest import tiny_pipeline

from lifecycle import ConfigError, LifecycleError, config, pipeline, workloads
from lifecycle.cli import main

DIGITS = {"format": "sklearn-digits"}


def test_every_row_names_a_function_and_the_stages_key_it_by_kind(capsys):
    table = workloads.registry()
    assert {r.stage for r in table.recipes.values()} == {"pretrain", "adapt", "finetune", "distill"}
    for (stage, inputs, key), recipe in table.recipes.items():
        module, _, name = recipe.run.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), recipe.run
        assert (recipe.stage, recipe.inputs, recipe.key) == (stage, inputs, key) and recipe.metrics
    # every task that finetune trains has its distill row too, found by its inputs and answers kinds
    assert workloads.trained_tasks("finetune") == workloads.trained_tasks("distill")
    assert main(["recipes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["recipes"]) == len(table.recipes)
    assert listed["tasks"]["tabular-regression"] == {"inputs": "rows", "answers": "value"}
    assert main(["recipes"]) == 0
    assert "images   vector" in capsys.readouterr().out


def test_a_gate_on_another_workloads_metric_is_refused_at_validate():
    """The RBF-SVM baseline is what the image recipe reports: a text finetune cannot gate on it."""
    raw = tiny_pipeline()
    raw["stages"][0]["gates"] = [{"metric": "baseline_svm_accuracy", "min": 0.5}]
    with pytest.raises(ConfigError, match=r"stages\[0\]\.gates\[0\]\.metric: 'finetune' cannot produce "
                                          r"'baseline_svm_accuracy' \(its recipe lifecycle.workloads.text.classifier"):
        config.build(raw)
    images = {"name": "digits", "data": {"digits": DIGITS}, "task": {"type": "image-classification", "data": "digits"},
              "stages": [{"kind": "finetune", "model": {"preset": "bert-tiny"},
                          "gates": [{"metric": "baseline_svm_accuracy", "min": 0.5}]}]}
    assert config.build(images).stages[0].gates[0].metric == "baseline_svm_accuracy"


def test_a_key_with_no_recipe_is_refused_naming_what_that_input_offers():
    raw = {"name": "p", "data": {"digits": DIGITS},
           "stages": [{"kind": "pretrain", "data": "digits", "objective": "masked-feature",
                       "model": {"preset": "bert-tiny"}}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]: 'pretrain' has no recipe for images with masked-feature "
                                          r"\(for images: masked-image or contrastive"):
        config.build(raw)


def reports_more(cfg, parent, ctx):
    return {"accuracy": 1.0, "invented": 2.0}, {}


def test_a_recipe_reporting_a_metric_it_did_not_declare_is_stopped(tmp_path, monkeypatch):
    text = workloads.recipe("finetune", "text", "labels")
    table = workloads.registry()
    row = type(text)("finetune", "text", "labels", f"{__name__}:reports_more", frozenset({"accuracy"}))
    monkeypatch.setattr(workloads, "registry", lambda: type(table)(table.tasks, {
        **table.recipes, ("finetune", "text", "labels"): row}, table.origin))
    raw = tiny_pipeline(stages=tiny_pipeline()["stages"][:1])
    outcomes = None
    with pytest.raises(LifecycleError, match=r"reported \['invented'\], which its row of the recipe table"):
        outcomes = pipeline.run(config.build(raw), workdir=tmp_path, echo=lambda *_a, **_k: None)
    assert outcomes is None and not (tmp_path / "tiny" / "finetune").exists()  # nothing half-written
