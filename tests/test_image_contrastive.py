"""Contrastive pre-training of an image model (`pretrain` with `objective: contrastive` on an image source,
lifecycle.image_contrastive): real SimCLR steps of a tiny ViT on scikit-learn's digits, its held-out scores
against their chance levels, the finetune stages (image-classification and image-embedding) starting from
its encoder, and the settings refused at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lifecycle import ConfigError, config, pipeline
from lifecycle.edge import IMAGE_PROCESSOR

DIGITS = {"format": "sklearn-digits", "image": {"augment": {"translate": 1, "crop_scale": [0.85, 1.0]}}}
TRAIN = {"max_steps": 60, "batch_size": 64, "lr": 1.0e-3, "warmup_ratio": 0.0, "logging_steps": 50}
PRETRAIN = {"kind": "pretrain", "data": "digits", "objective": "contrastive",
            "model": {"preset": "bert-tiny", "overrides": {"patch_size": 2}}, "train": TRAIN}
ENCODER = "vit.embeddings.patch_embeddings.projection.weight"


def quiet(*_a, **_k):
    pass


def metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["metrics"]


def digits(task: str, stages: list[dict]) -> dict:
    return {"name": "simclr", "seed": 0, "data": {"digits": DIGITS}, "task": {"type": task, "data": "digits"},
            "stages": stages}


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory) -> Path:
    """pretrain (SimCLR, 60 steps: about 2 s of training on 2 cores) -> finetune (2 steps), one run."""
    finetune = {"kind": "finetune", "train": {**TRAIN, "max_steps": 2}, "collapse_min": None}
    workdir = tmp_path_factory.mktemp("simclr")
    outcomes = pipeline.run(config.build(digits("image-classification", [PRETRAIN, finetune])), workdir=workdir,
                            echo=quiet)
    assert [o.status for o in outcomes] == ["passed", "passed"]
    return workdir / "simclr"


def test_contrastive_pretraining_tells_held_out_views_apart(simclr_run):
    m = metrics(simclr_run, "pretrain")
    # chance: a model that cannot tell held-out digits apart (log b, 1/b)
    assert m["contrastive_loss"] < m["contrastive_loss_chance"] - 0.5, m
    # a random ViT already tells some views apart (top-1 ~4x chance): training must beat its own start
    assert m["contrastive_loss"] < m["contrastive_loss_init"] and m["contrastive_top1"] > m["contrastive_top1_init"], m
    assert {"probe_accuracy", "probe_accuracy_init", "probe_gain"} <= set(m)


def test_adapt_continues_from_the_pretrained_encoder_and_projection(simclr_run, tmp_path):
    adapt = {"kind": "adapt", "data": "digits", "objective": "contrastive", "model": {"path": str(simclr_run / "pretrain")},
             "train": {**TRAIN, "max_steps": 20, "lr": 2.0e-4}}
    outcomes = pipeline.run(config.build(digits("image-classification", [adapt])), workdir=tmp_path, echo=quiet)
    assert [o.status for o in outcomes] == ["passed"]
    pre, m = metrics(simclr_run, "pretrain"), metrics(tmp_path / "simclr", "adapt")
    # the same held-out views (fixed seed) through the loaded weights: adapt's start is pretrain's end,
    # projection included (a random projection would score near the random init's 4.4)
    assert m["contrastive_loss_init"] == pytest.approx(pre["contrastive_loss"], abs=1e-4), (pre, m)
    # 20 more steps from a fresh optimizer need not improve on it (measured: +-0.05), but must not undo it
    assert m["contrastive_loss"] < m["contrastive_loss_chance"] - 0.5, m


def test_the_classifier_starts_from_the_contrastive_encoder(simclr_run):
    pre = load_file(simclr_run / "pretrain" / "model.safetensors")
    fine = load_file(simclr_run / "finetune" / "model.safetensors")
    assert "projection.0.weight" in pre and "classifier.weight" in fine
    assert not any(k.startswith("projection") for k in fine)  # the projection stays behind
    # two fine-tuning steps move the loaded encoder a little; from a random init it would be another tensor
    moved = (fine[ENCODER] - pre[ENCODER]).norm() / pre[ENCODER].norm()
    assert moved < 0.2, float(moved)
    assert json.loads((simclr_run / "finetune" / IMAGE_PROCESSOR).read_text()) == json.loads(
        (simclr_run / "pretrain" / IMAGE_PROCESSOR).read_text())


def test_an_image_embedding_finetune_loads_the_contrastive_encoder(tmp_path):
    from lifecycle.image_contrastive import ViTContrastive
    from lifecycle.image_embedding import load
    from lifecycle.images import save, vit_config
    from lifecycle.models import ModelSource

    preprocessing = {"size": {"height": 8, "width": 8}, "image_mean": [0.5], "image_std": [0.5]}
    model = ViTContrastive(vit_config(preprocessing, ModelSource(preset="bert-tiny"), contrastive_temperature=0.1))
    save(model, preprocessing, tmp_path)
    embedder = load(tmp_path)  # what the image-embedding finetune reads from a parent (or `model.path`)
    got = embedder.body.embeddings.patch_embeddings.projection.weight
    assert (got == model.vit.embeddings.patch_embeddings.projection.weight).all()


@pytest.mark.parametrize("stage, says", [
    ({"block_size": 64}, r"stages\[0\].block_size: does not apply to images"),
    ({"contrastive": {"max_length": 32}}, r"stages\[0\].contrastive.max_length: does not apply to images"),
    ({"probe": {"data": "digits"}}, r"stages\[0\].probe: does not apply to images"),
])
def test_text_settings_are_refused_at_load_naming_the_field(stage, says):
    with pytest.raises(ConfigError, match=says):
        config.build(digits("image-classification", [{**PRETRAIN, **stage}]))


def test_adapt_refuses_text_settings_and_other_objectives_on_images():
    adapt = {"kind": "adapt", "data": "digits", "objective": "contrastive", "head_warmup_steps": 10}
    with pytest.raises(ConfigError, match=r"stages\[1\].head_warmup_steps: does not apply to images"):
        config.build(digits("image-classification", [PRETRAIN, adapt]))
    masked_image = {**PRETRAIN, "objective": "masked-image"}  # holds a masked-lm: adapt's default chain
    with pytest.raises(ConfigError, match=r"stages\[1\].objective: adapt continues an image model with "
                                          "`objective: contrastive`"):
        config.build(digits("image-classification", [masked_image, {"kind": "adapt", "data": "digits"}]))


def test_a_source_without_augmentation_is_refused_at_load():
    raw = digits("image-classification", [PRETRAIN])
    raw["data"]["digits"] = {"format": "sklearn-digits"}
    with pytest.raises(ConfigError, match=r"stages\[0\].data: 'digits' has no augmentation"):
        config.build(raw)
