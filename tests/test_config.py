import copy
from pathlib import Path

import pytest
import yaml
from conftest import tiny_pipeline

from lifecycle import ConfigError
from lifecycle.cli import main
from lifecycle.config import apply_override, build, load


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_yaml_and_python_build_the_same_pipeline(tmp_path):
    raw = tiny_pipeline()
    from_yaml = load(write(tmp_path, raw))
    from_python = build(copy.deepcopy(raw))
    assert from_yaml.model_dump() == from_python.model_dump()
    # the export stage carries its default parity gate, visible in the resolved config
    assert any(g.metric == "parity_max_abs_diff" for g in from_yaml.stages[1].gates)


def test_misspelt_key_names_the_field_path(tmp_path, capsys):
    raw = tiny_pipeline()
    raw["stages"][0]["train"]["lrr"] = 1e-3
    assert main(["validate", str(write(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "stages[0].train.lrr" in err and "unknown key" in err


def test_bad_value_names_the_field_path():
    raw = tiny_pipeline()
    raw["stages"][0]["train"]["lr"] = -1
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train\.lr"):
        build(raw)


def test_unknown_stage_kind_is_an_error():
    raw = tiny_pipeline()
    raw["stages"][1]["kind"] = "exprt"
    with pytest.raises(ConfigError, match=r"stages\[1\]"):
        build(raw)


def test_gate_on_a_metric_the_stage_cannot_produce():
    raw = tiny_pipeline()
    raw["stages"][0]["gates"] = [{"metric": "bleu", "min": 0.1}]
    with pytest.raises(ConfigError, match=r"stages\[0\]\.gates\[0\]\.metric: 'finetune' cannot produce 'bleu'"):
        build(raw)


def test_gate_vs_a_later_or_unknown_stage_is_an_error():
    raw = tiny_pipeline()
    raw["stages"][0]["gates"] = [{"metric": "accuracy", "max_drop": 0.01, "vs": "export"}]
    with pytest.raises(ConfigError, match="not an earlier stage"):
        build(raw)


def test_parent_must_produce_what_the_stage_reads():
    raw = tiny_pipeline()
    raw["stages"] = [raw["stages"][1]]  # export with no model-producing stage before it
    with pytest.raises(ConfigError, match="needs a parent"):
        build(raw)


def test_duplicate_stage_names_are_an_error():
    raw = tiny_pipeline()
    raw["stages"][1] = dict(raw["stages"][0])
    with pytest.raises(ConfigError, match="used twice"):
        build(raw)


def test_unknown_data_source_is_an_error():
    raw = tiny_pipeline()
    raw["task"]["data"] = "nope"
    with pytest.raises(ConfigError, match="task.data"):
        build(raw)


def test_set_overrides_by_stage_name_and_index():
    raw = tiny_pipeline()
    apply_override(raw, "stages.finetune.train.lr=1e-4")
    apply_override(raw, "stages.1.opset=18")
    apply_override(raw, "seed=7")
    p = build(raw)
    assert p.stages[0].train.lr == 1e-4 and p.stages[1].opset == 18 and p.seed == 7
    with pytest.raises(ConfigError, match="no stage named"):
        apply_override(raw, "stages.distill.train.lr=1")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override(raw, "seed")


def test_validate_prints_resolved_plan(tmp_path, capsys):
    path = write(tmp_path, tiny_pipeline())
    assert main(["validate", str(path), "--set", "stages.finetune.gates=[{metric: accuracy, min: 0.5}]"]) == 0
    out = capsys.readouterr().out
    assert "accuracy >= 0.5" in out and "accuracy >= finetune - 0.02" in out and "parity_max_abs_diff <= 0.0001" in out


def test_invalid_yaml_and_missing_file_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    assert main(["validate", str(bad)]) == 2
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_paths_resolve_relative_to_the_pipeline_file(tmp_path):
    raw = tiny_pipeline()
    p = load(write(tmp_path, raw))
    assert p.resolve("x/y.txt") == (tmp_path / "x" / "y.txt").resolve()
