"""Table classification end to end (lifecycle.workloads.tables.classification): real training steps on
scikit-learn's breast-cancer table and on palmerpenguins (categories and real missing values), real
torch.onnx export and onnxruntime, dynamic int8, the bundle, the edge runtime from raw rows, and
`bentoml serve` answering POST /predict on 127.0.0.1 with its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from lifecycle import ConfigError, config, data, pipeline, serving
from lifecycle.edge import Predictor, RowError, TablePreprocessing

ROOT = Path(__file__).resolve().parents[1]
CANCER = ROOT / "pipelines" / "tabular_classification.yaml"
PENGUINS = {
    "name": "penguins", "seed": 0,
    "data": {"penguins": {"format": "palmerpenguins", "table": {"target": "species", "drop": ["year"]}}},
    "task": {"type": "tabular-classification", "data": "penguins"},
    "stages": [
        {"kind": "finetune", "model": {"preset": "bert-tiny"}, "collapse_min": None,
         "train": {"epochs": 30, "batch_size": 32, "lr": 3.0e-3, "warmup_ratio": 0.0, "logging_steps": 10},
         "gates": [{"metric": "accuracy", "min": 0.9}]},
        {"kind": "export", "latency": {"runs": 2, "batch32": False}},
    ],
}
ROW = {"island": "Dream", "sex": "male", "bill_length_mm": 49.0, "bill_depth_mm": 18.5,
       "flipper_length_mm": 195.0, "body_mass_g": 3700.0}


def quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def cancer_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("cancer")
    outcomes = pipeline.run(config.load(CANCER), workdir=workdir, echo=quiet)
    assert [o.status for o in outcomes] == ["passed"] * 3
    return workdir / "tabular-classification"


@pytest.fixture(scope="module")
def penguins_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("penguins")
    pipeline.run(config.build(PENGUINS), workdir=workdir, echo=quiet)
    return workdir / "penguins"


def metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["metrics"]


@pytest.mark.slow  # a shipped pipeline beside the quickstart and penguins runs, which cover the path
def test_the_shipped_pipeline_passes_and_reports_control_and_trees_beside_the_model(cancer_run):
    m = metrics(cancer_run, "finetune")
    for name in ("accuracy", "f1_macro", "auroc"):
        assert 0 <= m[name] <= 1 and 0 <= m[f"control_{name}"] <= 1 and 0 <= m[f"baseline_gbdt_{name}"] <= 1
    assert m["accuracy"] >= 0.9 and m["baseline_gbdt_accuracy"] >= 0.9  # both learn the table
    assert metrics(cancer_run, "export")["parity_max_abs_diff"] <= 1e-4
    report = (cancer_run / "report.md").read_text()
    assert "baseline_gbdt_accuracy" in report and "control_accuracy" in report


@pytest.mark.slow  # a shipped pipeline beside the quickstart and penguins runs, which cover the path
def test_the_onnx_artifact_holds_the_graph_and_its_preprocessing(cancer_run):
    for stage in ("export", "quantize"):
        files = {f.name for f in (cancer_run / stage).iterdir()}
        assert files == {"model.onnx", "schema.json", "labels.json", "preprocessing.json", "manifest.json"}, stage
    schema = json.loads((cancer_run / "quantize" / "schema.json").read_text())
    assert schema["method"] == "predict_rows" and schema["route"] == "/predict" and schema["weights"] == "dynamic-int8"
    assert list(schema["inputs"]) == ["numeric", "numeric_missing", "categorical"]


@pytest.mark.slow  # a shipped pipeline beside the quickstart and penguins runs, which cover the path
def test_the_bundle_reproduces_the_pipelines_answers_from_raw_rows(cancer_run, tmp_path):
    from lifecycle.bundle import write_bundle

    zipped = write_bundle(cancer_run, tmp_path / "model.zip")
    p = Predictor.open(zipped)
    assert p.check() == 8  # the recorded rows, answered again by the int8 graph on the edge runtime
    row = p.manifest["sample_predictions"][0]["row"]
    [answer] = p.predict_rows([row])
    assert answer["label"] in p.labels and abs(sum(answer["scores"].values()) - 1) < 1e-5


def test_training_edge_and_torch_agree_on_the_same_rows(penguins_run):
    """Same row in, same tensors out (the training path reads a split's columns, the edge runtime JSON
    rows), and the same logits from the torch model and its ONNX graph."""
    from lifecycle.workloads.tables.model import TableTransformer, predict

    pipe = config.build(PENGUINS)
    table = data.load(pipe.data["penguins"], pipe)
    trained, _ = table.features("test")
    edge = Predictor.open(penguins_run / "export")
    rows = json.loads(table.splits["test"][table.schema.features].to_json(orient="records"))
    fed = edge.encode(rows)
    assert all(np.array_equal(trained[k], fed[k]) for k in trained)
    torch_logits = predict(TableTransformer.from_pretrained(penguins_run / "finetune"), trained)
    assert np.abs(edge.logits(rows) - torch_logits).max() <= 1e-4
    assert metrics(penguins_run, "finetune")["accuracy"] >= 0.9


def test_export_tries_the_bert_fusions_on_a_table_graph_and_keeps_one_only_within_parity(penguins_run):
    """The encoder is a BertModel: attention fuses without a mask. Which graph is kept depends on timing;
    either way the kept graph is the one in the artifact."""
    from lifecycle.edge.onnx_graph import op_types

    found = json.loads((penguins_run / "export" / "manifest.json").read_text())["details"]["graph_optimization"]
    assert found["fused_operators"]["Attention"] == 2  # bert-tiny: 2 layers
    assert found["parity_max_abs_diff_fused"] <= 1e-4
    assert ("Attention" in op_types(penguins_run / "export" / "model.onnx")) == found["kept"]


def test_missing_values_and_unknown_categories_are_answered_and_counted(penguins_run):
    p = Predictor.open(penguins_run / "export")
    odd = [{**ROW, "island": "Atlantis"}, {**ROW, "sex": None, "body_mass_g": None}, {k: None for k in ROW}]
    answers = p.predict_rows(odd)
    assert len(answers) == 3 and all(a["label"] in p.labels for a in answers)
    _, counts = p.table_outputs(odd + [{**ROW, "colour": "blue", "body_mass_g": 1e9}])
    assert counts["unknown_category"] == {"island": 1} and counts["extra_columns"] == {"colour": 1}
    assert counts["out_of_range"] == {"body_mass_g": 1} and counts["missing"]["body_mass_g"] == 2
    with pytest.raises(RowError, match="column 'island': missing from row 0"):
        p.predict_rows([{k: v for k, v in ROW.items() if k != "island"}])
    assert isinstance(p.table, TablePreprocessing)


def test_a_text_task_on_a_table_and_text_only_settings_are_refused():
    raw = json.loads(json.dumps(PENGUINS))
    raw["task"]["type"] = "classification"
    with pytest.raises(ConfigError, match="task.data: 'penguins' is a table, but a classification task reads text"):
        config.build(raw)
    raw = json.loads(json.dumps(PENGUINS))
    raw["stages"][0]["lora"] = {"r": 4}  # on a preset: nothing pre-trained to adapt
    with pytest.raises(ConfigError, match=r"stages\[0\].lora: adapters on a randomly initialised table model"):
        config.build(raw)
    raw = json.loads(json.dumps(PENGUINS))
    raw["stages"][0]["class_weights"] = "balanced"
    with pytest.raises(ConfigError, match=r"stages\[0\].class_weights: not supported for tabular-classification"):
        config.build(raw)


# ------------------------------------------------------------------------------------ POST /predict
@pytest.fixture(scope="module")
def server(penguins_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    settings = serving.ServingSettings(max_texts=4, max_concurrency=2, timeout_s=5.0)
    cfg = serving.write_config(serving.resolve(penguins_run), settings, tmp / "serving.json")
    with serving.Server(cfg, log=tmp / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


def test_predict_answers_as_the_edge_runtime_does(server, penguins_run):
    rows = [ROW, {**ROW, "sex": None, "island": "Atlantis", "colour": "blue"}]
    r = server.post("/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    local = Predictor.open(penguins_run / "export").predict_rows(rows)
    assert [a["label"] for a in r.json()] == [a["label"] for a in local]
    assert max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(r.json(), local) for k in a["scores"]) < 1e-5
    counts = server.get("/metadata").json()["input_counts"]
    assert counts["extra_columns"]["colour"] >= 1 and counts["unknown_category"]["island"] >= 1


@pytest.mark.parametrize("body, says", [
    ({"rows": [{k: v for k, v in ROW.items() if k != "sex"}]}, "column 'sex': missing from row 0"),
    ({"rows": [{**ROW, "body_mass_g": "heavy"}]}, "column 'body_mass_g': expected a number"),
    ({"rows": [ROW] * 5}, '"rows" has 5 items; the limit is 4'),
    ({"rows": []}, '"rows" must be a non-empty list'),
    ({"texts": ["a text"]}, 'exactly one key, "rows"'),
    ({"rows": ["not a row"]}, "row 0 is not a mapping"),
])
def test_predict_refusals_name_what_is_wrong(server, body, says):
    r = server.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert says in r.json()["error"] and "Traceback" not in r.text
    assert server.post("/classify", json={"texts": ["x"]}).status_code == 404  # a table model answers /predict


# ------------------------------------------------------------------------- masked-feature pre-training
PRETRAINED = {
    **PENGUINS, "name": "penguins-pretrained",
    "stages": [
        {"kind": "pretrain", "data": "penguins", "objective": "masked-feature", "mlm_probability": 0.3,
         "train": {"epochs": 30, "batch_size": 32, "lr": 3.0e-3, "warmup_ratio": 0.0, "logging_steps": 10}},
        {"kind": "finetune", "collapse_min": None, "control": {},
         "train": {"epochs": 10, "batch_size": 32, "lr": 3.0e-3, "warmup_ratio": 0.0, "logging_steps": 10}},
    ],
}


@pytest.mark.slow  # the tabular quickstart runs the same chain (and gates reconstruction) by default
def test_masked_feature_pretraining_reconstructs_and_fine_tunes_from_its_encoder(tmp_path):
    from safetensors.torch import load_file

    pipeline.run(config.build(PRETRAINED), workdir=tmp_path, echo=quiet)
    run = tmp_path / "penguins-pretrained"
    pre = metrics(run, "pretrain")
    # held-out rows: masked numbers come back closer than the training mean would put them (RMSE 1.0 in
    # normalised units), masked categories better than the 1-in-2-or-3 of a guess
    assert pre["numeric_rmse"] < 0.9 and pre["categorical_accuracy"] > 0.5
    assert {"probe_accuracy", "probe_accuracy_init", "probe_gain"} <= set(pre)
    assert json.loads((run / "pretrain" / "preprocessing.json").read_text()) == json.loads(
        (run / "finetune" / "preprocessing.json").read_text())  # the table is read through the pre-trained model's
    fine = metrics(run, "finetune")
    assert {"control_accuracy", "pretraining_gain", "baseline_gbdt_accuracy"} <= set(fine)
    pretrained, tuned = load_file(run / "pretrain" / "model.safetensors"), load_file(run / "finetune" / "model.safetensors")
    assert "mask_token" in pretrained and "mask_token" not in tuned and "head.2.weight" in tuned
    assert set(k for k in tuned if not k.startswith("head.")) <= set(pretrained)  # the encoder came from pretrain


def test_masked_cells_without_a_value_are_never_reconstruction_targets():
    import torch

    from lifecycle.workloads.tables.masked_features import targets

    missing = torch.tensor([[0.0, 1.0]])
    categorical = torch.tensor([[0, 3]])
    masked = torch.ones(1, 4, dtype=torch.bool)
    numeric, cats = targets(missing, categorical, masked)
    assert numeric.tolist() == [[True, False]] and cats.tolist() == [[False, True]]


# ------------------------------------------------------------------------- contrastive (SCARF) pre-training
def test_scarf_corrupts_a_share_of_features_with_values_from_other_rows():
    import torch

    from lifecycle.workloads.tables.contrastive import CorruptedRows

    n = 200  # every cell of row i holds a value no other row has: a corrupted cell is one that changed
    feeds = {"numeric": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
             "numeric_missing": np.zeros((n, 3), dtype=np.float32),
             "categorical": (np.arange(n * 2).reshape(n, 2) + 2).astype(np.int64)}
    rows = CorruptedRows(feeds, corruption=0.6, seed=0)
    changed = []
    for i in range(n):
        item = rows[i]
        num = item["positive_numeric"] != item["numeric"]
        cat = item["positive_categorical"] != item["categorical"]
        changed.append(torch.cat([num, cat]).float())
        # a corrupted cell comes from the same column of another row (a draw from that feature's marginal)
        for j in torch.nonzero(num).flatten().tolist():
            assert item["positive_numeric"][j].item() in feeds["numeric"][:, j]
        for j in torch.nonzero(cat).flatten().tolist():
            assert item["positive_categorical"][j].item() in feeds["categorical"][:, j]
    share = torch.stack(changed)
    assert share.sum(1).min() >= 1  # at least one feature per row
    assert 0.55 < share.mean() < 0.72, share.mean()  # 0.6, plus the forced one, minus a donor that was the row itself


def test_scarf_pretraining_then_lora_fine_tuning_merged_into_a_plain_model(tmp_path):
    """SCARF pretrain -> LoRA finetune -> export, one pipeline: the contrastive encoder tells held-out rows
    apart, LoRA adapts it (merged before saving) and export reads a plain TableTransformer."""
    from safetensors.torch import load_file

    lora = {**PRETRAINED["stages"][1], "control": None, "lora": {"r": 4, "alpha": 8},
            "train": {**PRETRAINED["stages"][1]["train"], "epochs": 20, "lr": 1.0e-2}}  # adapters: a higher lr
    raw = {**PRETRAINED, "name": "penguins-scarf",
           "stages": [{"kind": "pretrain", "data": "penguins", "objective": "contrastive",
                       "train": {**PRETRAINED["stages"][0]["train"], "epochs": 15}},
                      lora, {"kind": "export", "latency": {"runs": 2, "batch32": False}}]}
    pipeline.run(config.build(raw), workdir=tmp_path, echo=quiet)
    run = tmp_path / "penguins-scarf"
    pre = metrics(run, "pretrain")
    # held-out rows pick out their own corrupted copy better than chance (measured: top-1 0.23, chance 0.06)
    assert pre["contrastive_loss"] < pre["contrastive_loss_chance"] - 0.1, pre
    assert pre["contrastive_top1"] > 2 * pre["contrastive_top1_chance"], pre
    assert {"probe_accuracy", "probe_accuracy_init", "probe_gain"} <= set(pre)

    fine = metrics(run, "finetune")
    assert fine["trainable_fraction"] < 0.5 and fine["lora_merge_max_abs_diff"] < 1e-4, fine
    assert fine["accuracy"] > 0.9 and "baseline_gbdt_accuracy" in fine, fine  # adapters and head learned the species
    assert (run / "finetune" / "adapter" / "adapter_model.safetensors").is_file()
    pretrained, tuned = load_file(run / "pretrain" / "model.safetensors"), load_file(run / "finetune" / "model.safetensors")
    assert any(k.startswith("projection.") for k in pretrained) and not any(k.startswith("projection.") for k in tuned)
    assert set(k for k in tuned if not k.startswith("head.")) <= set(pretrained)  # the encoder came from pretrain
    assert not any("lora" in k for k in tuned)  # merged: export reads a plain TableTransformer
    assert all((tuned[k] == pretrained[k]).all() for k in tuned if k.startswith("features."))  # frozen tokenizer
    assert metrics(run, "export")["accuracy"] == pytest.approx(fine["accuracy"], abs=0.02)


def test_text_contrastive_settings_are_refused_on_a_table(tmp_path):
    from lifecycle import LifecycleError

    raw = {**PRETRAINED, "name": "scarf-bad",
           "stages": [{"kind": "pretrain", "data": "penguins", "objective": "contrastive",
                       "contrastive": {"max_length": 64}, "train": {"max_steps": 1}}]}
    with pytest.raises(LifecycleError, match=r"contrastive\.max_length: a text setting"):
        pipeline.run(config.build(raw), workdir=tmp_path, echo=quiet)


def test_a_table_model_refuses_a_table_without_its_columns(tmp_path):
    import pandas as pd

    from lifecycle import LifecycleError

    quick = {**PRETRAINED["stages"][0], "train": {"max_steps": 2, "batch_size": 32}}  # any pre-trained table model
    pipeline.run(config.build({**PRETRAINED, "stages": [quick]}), workdir=tmp_path, echo=quiet)
    rows = pd.DataFrame({"island": ["Dream", "Biscoe"] * 10, "species": ["Adelie", "Gentoo"] * 10})
    rows.to_csv(tmp_path / "few.csv", index=False)
    raw = {**PENGUINS, "name": "few", "data": {"few": {"format": "csv", "path": str(tmp_path / "few.csv"),
                                                        "table": {"target": "species"}}},
           "task": {"type": "tabular-classification", "data": "few"},
           "stages": [{**PRETRAINED["stages"][1], "model": {"path": str(tmp_path / "penguins-pretrained" / "pretrain")}}]}
    with pytest.raises(LifecycleError, match=r"trained on columns this table lacks: \['bill_length_mm'"):
        pipeline.run(config.build(raw), workdir=tmp_path, echo=quiet)


# ----------------------------------------------------------------------------------------- regression
@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("regression")
    outcomes = pipeline.run(config.load(ROOT / "pipelines" / "tabular_regression.yaml"), workdir=workdir, echo=quiet)
    assert [o.status for o in outcomes] == ["passed"] * 5
    return workdir / "tabular-regression"


@pytest.mark.slow  # the shipped pipeline at full length; its path to HTTP runs by default (test_number_answers_over_http)
def test_the_regression_pipeline_answers_in_the_targets_units(regression_run):
    fine = metrics(regression_run, "finetune")
    assert {"r2", "rmse", "mae", "control_r2", "baseline_gbdt_r2", "baseline_gbdt_rmse", "pretraining_gain"} <= set(fine)
    assert metrics(regression_run, "pretrain")["numeric_rmse"] < 1.0
    assert "categorical_accuracy" not in metrics(regression_run, "pretrain")  # diabetes has no categories
    student = metrics(regression_run, "distill")
    assert student["teacher_r2"] == pytest.approx(fine["r2"]) and student["compression"] > 1.5
    assert student["r2"] > fine["r2"] - 0.05 and student["retention"] > 0.8, student
    p = Predictor.open(regression_run / "quantize")
    rows = [r["row"] for r in p.manifest["details"]["sample_predictions"]]
    values = [a["value"] for a in p.regress_rows(rows)]
    # disease progression is 25..346 with mean ~152: raw standardised outputs would sit near 0
    assert 50 < np.mean(values) < 300 and p.check() == 8
    with pytest.raises(Exception, match="answers regress_rows"):
        p.predict_rows(rows)


def test_a_regression_finetune_must_drop_the_collapse_gate():
    raw = yaml.safe_load((ROOT / "pipelines" / "tabular_regression.yaml").read_text())
    raw["stages"][1].pop("collapse_min")
    with pytest.raises(ConfigError, match=r"stages\[1\].collapse_min: a regression has no classes"):
        config.build(raw)


@pytest.mark.slow  # the shipped pipeline at full length; its path to HTTP runs by default (test_number_answers_over_http)
def test_the_serve_stage_scores_a_regressors_http_answers(regression_run):
    """The serve stage takes any task whose answers it can score (here by R2 against the test targets)."""
    raw = yaml.safe_load((ROOT / "pipelines" / "tabular_regression.yaml").read_text())
    raw["stages"].append({"kind": "serve", "warmup_requests": 2})
    outcomes = pipeline.run(config.build(raw, base_dir=ROOT / "pipelines"), workdir=regression_run.parent, echo=quiet)
    assert [o.status for o in outcomes] == ["cached"] * 5 + ["passed"]  # only the new stage ran
    served = metrics(regression_run, "serve")
    assert served["r2"] == metrics(regression_run, "quantize")["r2"]  # the HTTP answers score as the model does
    assert served["prediction_mismatches"] == 0 and served["error_count"] == 0


# ----------------------------------------------------------------------------------------- quickstart
def test_the_tabular_quickstart_passes_every_gate_from_pretraining_to_http(tmp_path):
    """pipelines/tabular_quickstart.yaml as shipped: masked-feature pretrain -> finetune -> distil -> export
    -> int8 -> serve (a real `bentoml serve` on 127.0.0.1 answering POST /predict)."""
    outcomes = pipeline.run(config.load(ROOT / "pipelines" / "tabular_quickstart.yaml"), workdir=tmp_path, echo=quiet)
    assert [(o.name, o.status) for o in outcomes] == [(s, "passed") for s in
                                                      ("pretrain", "finetune", "distill", "export", "quantize", "serve")]
    run = tmp_path / "tabular-quickstart"
    student = json.loads((run / "distill" / "config.json").read_text())
    assert student["num_hidden_layers"] == 1 and metrics(run, "distill")["compression"] > 1.5
    assert metrics(run, "serve")["prediction_mismatches"] == 0
    report = json.loads((run / "report.json").read_text())
    assert report["passed"] and all(g["passed"] for s in report["stages"] for g in s["gates"])


# -------------------------------------------------------------------------------------------- anomaly
@pytest.mark.slow  # the shipped pipeline at full length; its path to HTTP runs by default (test_number_answers_over_http)
def test_the_anomaly_pipeline_scores_rows_by_reconstruction_error(tmp_path):
    outcomes = pipeline.run(config.load(ROOT / "pipelines" / "tabular_anomaly.yaml"), workdir=tmp_path, echo=quiet)
    assert [o.status for o in outcomes] == ["passed"] * 3
    run = tmp_path / "tabular-anomaly"
    m = metrics(run, "export")
    assert 0.6 <= m["auroc"] <= 1 and 0 < m["average_precision"] <= 1 and m["parity_max_abs_diff"] <= 1e-4
    # beside it: the scorer untrained, IsolationForest (also label-free) and supervised trees (a ceiling)
    assert m["pretraining_gain"] == pytest.approx(m["auroc"] - m["control_auroc"], abs=1e-3)
    assert m["baseline_gbdt_auroc"] > 0.95 and 0.5 < m["baseline_iforest_auroc"] < m["baseline_gbdt_auroc"]
    p = Predictor.open(run / "quantize")
    row = p.manifest["details"]["sample_predictions"][0]["row"]
    typical, odd = p.score_rows([row, {**row, "mean radius": 1e3, "worst area": -5.0}])
    assert typical["anomaly_score"] >= 0 and odd["anomaly_score"] > typical["anomaly_score"]  # out of range: clipped, still odd
    assert p.check() == 8


@pytest.fixture(scope="module")
def two_epoch_run(request, tmp_path_factory) -> Path:
    """pipelines/tabular_{regression,anomaly}.yaml at two epochs a stage, ungated, without the from-scratch
    control: the path to HTTP, not the model's quality (the slow tests')."""
    raw = yaml.safe_load((ROOT / "pipelines" / f"tabular_{request.param}.yaml").read_text())
    for stage in raw["stages"]:
        stage["gates"] = []
        stage.pop("control", None)
        if "train" in stage:
            stage["train"]["epochs"] = 2
    workdir = tmp_path_factory.mktemp(request.param)
    pipe = config.build(raw, base_dir=ROOT / "pipelines")
    outcomes = pipeline.run(pipe, workdir=workdir, echo=quiet)
    assert [o.status for o in outcomes] == ["passed"] * len(raw["stages"])
    return workdir / pipe.name


@pytest.mark.parametrize("two_epoch_run, route, method, key, places, bad", [
    ("regression", "/regress", "regress_rows", "value", 3, ("bmi", "high")),
    ("anomaly", "/score", "score_rows", "anomaly_score", 4, ("mean radius", "big"))],
    ids=["regress", "score"], indirect=["two_epoch_run"])
def test_number_answers_over_http(two_epoch_run, route, method, key, places, bad, tmp_path):
    settings = serving.ServingSettings(max_texts=4, max_concurrency=2, timeout_s=5.0)
    cfg = serving.write_config(serving.resolve(two_epoch_run), settings, tmp_path / "serving.json")
    p = Predictor.open(two_epoch_run / "quantize")
    rows = [r["row"] for r in p.manifest["details"]["sample_predictions"][:3]]
    with serving.Server(cfg, log=tmp_path / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.post(route, json={"rows": rows})
        assert r.status_code == 200, r.text
        assert [round(a[key], places) for a in r.json()] == [round(a[key], places) for a in getattr(p, method)(rows)]
        column, value = bad
        refused = c.post(route, json={"rows": [{**rows[0], column: value}]})
        assert refused.status_code == 422 and f"column '{column}': expected a number" in refused.json()["error"]
