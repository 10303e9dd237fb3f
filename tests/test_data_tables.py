"""Table sources (lifecycle.data.tables) and the one table transform (lifecycle.edge.TablePreprocessing):
schema inference and declaration errors, missing values kept as such, preprocessing fitted on train only,
unknown categories and out-of-range values at inference counted, and the same row giving the same
tensors through the training path (columns of a split) and the serving path (JSON rows)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lifecycle import ConfigError, LifecycleError, config, data
from lifecycle.data.sources import DataSource
from lifecycle.edge import MISSING_ID, UNKNOWN_ID, RowError, TablePreprocessing


class View:
    """The pipeline view the data layer reads (sources, seed, where relative paths start)."""

    def __init__(self, base, seed=0):
        self.base, self.seed, self.data = base, seed, {}

    def resolve(self, path):
        return self.base / path


def penguins(tmp_path, **table):
    return data.load(DataSource(format="palmerpenguins", table={"target": "species", "drop": ["year"], **table}),
                     View(tmp_path))


def test_penguins_schema_is_inferred_and_missing_values_stay_missing(tmp_path):
    d = penguins(tmp_path)
    assert d.schema.numeric == ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    assert d.schema.categorical == ["island", "sex"] and d.schema.target_kind == "categorical"
    assert d.labels == ["Adelie", "Chinstrap", "Gentoo"]
    feeds, counts = d.features("train")
    train = d.splits["train"]
    gone = train["bill_length_mm"].isna().to_numpy()
    sex_gone = train["sex"].isna().to_numpy()
    assert gone.any() and sex_gone.any(), "palmerpenguins has missing values in train at seed 0"
    # missing is a flag the model embeds, not a zero it reads as the mean
    assert (feeds["numeric_missing"][:, 0] == gone).all() and (feeds["numeric"][gone, 0] == 0).all()
    assert (feeds["categorical"][sex_gone, 1] == MISSING_ID).all() and (feeds["categorical"][~sex_gone, 1] >= 2).all()
    assert counts["missing"]["sex"] == sex_gone.sum() and counts["unknown_category"] == {}


def test_preprocessing_is_fitted_on_the_training_split_only(tmp_path):
    d = penguins(tmp_path)
    fitted = {c["name"]: c for c in d.preprocessing["numeric"]}["body_mass_g"]
    train, everything = d.splits["train"]["body_mass_g"], pd.concat(d.splits.values())["body_mass_g"]
    assert math.isclose(fitted["mean"], train.mean(), rel_tol=1e-12)
    assert not math.isclose(fitted["mean"], everything.mean(), rel_tol=1e-6)
    assert fitted["max"] == train.max()
    assert json.loads(json.dumps(d.preprocessing)) == d.preprocessing  # travels as preprocessing.json


def test_splits_are_deterministic_and_stratified(tmp_path):
    a, b = penguins(tmp_path), penguins(tmp_path)
    assert a.splits["test"].equals(b.splits["test"])
    other = data.load(DataSource(format="palmerpenguins", table={"target": "species"}), View(tmp_path, seed=1))
    assert not other.splits["test"].equals(a.splits["test"])
    share = a.splits["train"]["species"].value_counts(normalize=True)
    assert (abs(a.splits["test"]["species"].value_counts(normalize=True) - share) < 0.1).all()


def test_bundled_sklearn_tables_classification_and_regression(tmp_path):
    cancer = data.load(DataSource(format="sklearn", dataset="breast_cancer", table={"target": "target"}), View(tmp_path))
    assert cancer.labels == ["0", "1"] and len(cancer.schema.numeric) == 30
    assert set(cancer.target("test")) == {0, 1}
    diabetes = data.load(DataSource(format="sklearn", dataset="diabetes", table={"target": "target"}), View(tmp_path))
    assert diabetes.labels is None and diabetes.schema.target_kind == "numeric"
    assert diabetes.target("test").dtype == np.float32


def test_anomaly_baselines_find_a_real_signal_and_not_a_shuffled_one(tmp_path):
    """The bars an anomaly scorer is reported beside, on answers known in advance: malignant tumours as
    the anomalies, supervised trees near-perfect and IsolationForest (no labels) well above chance;
    labels shuffled across rows, both at chance."""
    from lifecycle.workloads.tables.evaluation import anomaly_baselines

    cancer = data.load(DataSource(format="sklearn", dataset="breast_cancer", table={"target": "target"}), View(tmp_path))
    malignant = {split: cancer.target(split) == cancer.labels.index("0") for split in ("train", "test")}
    real = anomaly_baselines(cancer, malignant)
    assert real["baseline_gbdt_auroc"] > 0.95 and real["baseline_iforest_auroc"] > 0.65, real
    # 57 test rows: one shuffle's AUROC has a standard deviation of ~0.08, so average five
    rng = np.random.default_rng(0)
    shuffled = [anomaly_baselines(cancer, {split: rng.permutation(v) for split, v in malignant.items()})
                for _ in range(5)]
    for bar in ("baseline_gbdt_auroc", "baseline_iforest_auroc"):
        assert abs(np.mean([s[bar] for s in shuffled]) - 0.5) < 0.1, (bar, shuffled)


def test_the_same_row_gives_the_same_tensors_in_training_and_serving(tmp_path):
    d = penguins(tmp_path)
    test = d.splits["test"]
    trained, _ = d.features("test")
    # a service receives JSON: NaN becomes null, numpy numbers become Python numbers
    rows = json.loads(test[d.schema.features].to_json(orient="records"))
    served, counts = TablePreprocessing(d.preprocessing).transform_rows(rows)
    for name in trained:
        assert trained[name].dtype == served[name].dtype and np.array_equal(trained[name], served[name]), name
    assert counts["extra_columns"] == {}


def test_unknown_categories_out_of_range_values_and_extra_columns_are_counted(tmp_path):
    d = penguins(tmp_path)
    pre = TablePreprocessing(d.preprocessing)
    ok = {"island": "Dream", "sex": "male", "bill_length_mm": 40.0, "bill_depth_mm": 18.0,
          "flipper_length_mm": 190, "body_mass_g": 3700.0}
    odd = {**ok, "island": "Atlantis", "body_mass_g": 1e6, "colour": "blue"}
    feeds, counts = pre.transform_rows([ok, odd, {**ok, "sex": None, "bill_depth_mm": None}])
    assert feeds["categorical"][1, 0] == UNKNOWN_ID and feeds["categorical"][0, 0] >= 2
    mass = {c["name"]: c for c in d.preprocessing["numeric"]}["body_mass_g"]
    assert math.isclose(feeds["numeric"][1, 3], (mass["max"] - mass["mean"]) / mass["std"], rel_tol=1e-6)  # clipped
    assert counts == {"missing": {"sex": 1, "bill_depth_mm": 1}, "unknown_category": {"island": 1},
                      "out_of_range": {"body_mass_g": 1}, "extra_columns": {"colour": 1}}


@pytest.mark.parametrize("change, column, says", [
    ({"drop": "sex"}, "sex", "missing from row 0"),
    ({"body_mass_g": "heavy"}, "body_mass_g", "expected a number"),
    ({"body_mass_g": True}, "body_mass_g", "expected a number"),
    ({"island": 1.5}, "island", "expected a category"),
])
def test_rows_the_schema_refuses_name_the_column(tmp_path, change, column, says):
    pre = TablePreprocessing(penguins(tmp_path).preprocessing)
    row = {"island": "Dream", "sex": "male", "bill_length_mm": 40.0, "bill_depth_mm": 18.0,
           "flipper_length_mm": 190, "body_mass_g": 3700.0}
    row.pop(change.pop("drop", None), None)
    with pytest.raises(RowError, match=says) as err:
        pre.transform_rows([{**row, **change}])
    assert err.value.column == column and column in str(err.value)


def write(tmp_path, name="rows.csv", n=40):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 80, n), "plan": rng.choice(["basic", "pro", None], n),
                          "member": rng.choice([True, False], n), "user_id": [f"u{i}" for i in range(n)],
                          "churned": rng.choice(["yes", "no"], n)})
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name, fmt", [("rows.csv", "csv"), ("rows.parquet", "parquet")])
def test_csv_and_parquet_tables_with_booleans(tmp_path, name, fmt):
    write(tmp_path, name)
    d = data.load(DataSource(format=fmt, path=name, table={"target": "churned", "drop": ["user_id"]}), View(tmp_path))
    assert (d.schema.numeric, d.schema.categorical, d.schema.boolean) == (["age"], ["plan"], ["member"])
    assert {c["name"]: c["vocabulary"] for c in d.preprocessing["categorical"]} == {
        "plan": ["basic", "pro"], "member": ["false", "true"]}
    pre = TablePreprocessing(d.preprocessing)
    feeds, _ = pre.transform_rows([{"age": 30, "plan": "pro", "member": "yes"}, {"age": 30, "plan": "pro", "member": 0}])
    assert feeds["categorical"][:, 1].tolist() == [3, 2]  # "true" is vocabulary id 1 -> 3; "false" -> 2
    with pytest.raises(RowError, match="expected a boolean"):
        pre.transform_rows([{"age": 30, "plan": "pro", "member": "maybe"}])


@pytest.mark.parametrize("table, says", [
    ({"target": "churn"}, r"table.target: no column 'churn' \(columns: \['age'"),
    ({"target": "churned", "numeric": ["plan"], "drop": ["user_id"]}, "table.numeric: column 'plan' holds non-numbers"),
    ({"target": "churned", "categorical": ["agee"]}, "table.categorical: no column 'agee'"),
    ({"target": "churned"}, "column 'user_id' has 40 distinct values"),
])
def test_schema_mismatches_name_the_file_and_the_column(tmp_path, table, says, monkeypatch):
    path = write(tmp_path)
    if "distinct" in says:
        monkeypatch.setattr("lifecycle.data.tables.MAX_CATEGORIES", 20)
    with pytest.raises(LifecycleError, match=says) as err:
        data.load(DataSource(format="csv", path="rows.csv", table=table), View(tmp_path))
    assert str(path) in str(err.value)


def test_an_unreadable_table_file_is_named(tmp_path):
    (tmp_path / "rows.parquet").write_text("not parquet")
    with pytest.raises(LifecycleError, match=r"rows.parquet: not a readable parquet table"):
        data.load(DataSource(format="parquet", path="rows.parquet", table={"target": "y"}), View(tmp_path))


@pytest.mark.parametrize("source, says", [
    ({"format": "parquet", "path": "x.parquet"}, "is a table: add `table"),
    ({"format": "sklearn", "table": {"target": "target"}}, "dataset: name one of breast_cancer, diabetes"),
    ({"format": "jsonl", "path": "x", "table": {"target": "y"}}, "table: a 'jsonl' source is not a table"),
    ({"format": "palmerpenguins", "table": {"target": "species", "numeric": ["species"]}},
     "data.rows.table: numeric: 'species' is the target"),
    ({"format": "palmerpenguins", "table": {"target": "species", "numeric": ["sex"], "drop": ["sex"]}},
     "data.rows.table: drop: 'sex' is also listed under numeric"),
])
def test_table_config_errors_name_the_field(source, says):
    raw = {"name": "t", "data": {"rows": source}, "task": {"data": "rows"},
           "stages": [{"kind": "export"}]}
    with pytest.raises(ConfigError, match=says):
        config.build(raw)


def test_rare_training_categories_train_the_unknown_embedding(tmp_path):
    """With min_frequency, categories seen too rarely in train map to the unknown id already in training,
    so the embedding that unseen categories get at serving time has been trained."""
    rows = pd.DataFrame({"colour": ["red"] * 20 + ["blue"] * 18 + ["teal", "mauve"],
                         "size": np.arange(40, dtype=float), "y": ["a", "b"] * 20})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    src = DataSource(format="csv", path="rows.csv", split={"validation": 0.1, "test": 0.1},
                     table={"target": "y", "min_frequency": 2})
    d = data.load(src, View(tmp_path))
    assert {c["name"]: c["vocabulary"] for c in d.preprocessing["categorical"]} == {"colour": ["blue", "red"]}
    feeds, counts = d.features("train")
    rare = d.splits["train"]["colour"].isin(["teal", "mauve"]).to_numpy()
    assert rare.any(), "a rare category is in train at seed 0"
    assert (feeds["categorical"][rare, 0] == UNKNOWN_ID).all() and counts["unknown_category"].get("colour", 0) == rare.sum()
