import json
import statistics

import pytest
import yaml
from conftest import tiny_pipeline

from lifecycle import ConfigError
from lifecycle.cli import main
from lifecycle.config import build
from lifecycle.evaluation.seeds import aggregate


def test_aggregate_mean_std_and_t_interval():
    out = aggregate({0: {"accuracy": 0.8, "name": "x"}, 1: {"accuracy": 0.9}, 2: {"accuracy": 1.0}})
    assert out["n_seeds"] == 3 and out["accuracy"] == pytest.approx(0.9)
    assert out["accuracy_std"] == pytest.approx(0.1)
    half = 4.302653 * 0.1 / 3**0.5  # t(0.975, 2)
    assert out["accuracy_ci_low"] == pytest.approx(0.9 - half, abs=1e-6)
    assert out["accuracy_ci_high"] == pytest.approx(0.9 + half, abs=1e-6)
    assert "name" not in out


def test_ci_bound_needs_seeds():
    raw = tiny_pipeline()
    raw["stages"][0]["gates"] = [{"metric": "accuracy", "min": 0.5, "bound": "lower_ci"}]
    with pytest.raises(ConfigError, match="needs `seeds"):
        build(raw)


def test_a_ci_bound_gate_fails_where_the_mean_passes(tmp_path, capsys):
    """Three seeds of a deliberately small, noisy fine-tune: the mean validation loss clears a bar the upper
    end of its 95% interval does not. The loss, not accuracy: 2 epochs may leave every seed predicting one
    class, and on the balanced test split every such seed scores exactly 0.2, an interval of width 0."""
    raw = tiny_pipeline()
    raw["stages"] = raw["stages"][:1]
    stage = raw["stages"][0]
    stage["seeds"] = [0, 1, 2]
    stage["train"]["epochs"] = 2
    stage["gates"] = [{"metric": "eval_loss", "max": 100.0, "bound": "upper_ci"}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "tiny" / "finetune" / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["n_seeds"] == 3 and set(manifest["details"]["seeds"]) == {"0", "1", "2"}
    # the bar comes from the three seeds' own losses, by hand (t(0.975, 2) = 4.302653), not from the
    # aggregate under test: halfway between their mean and the upper end of their 95% interval
    losses = [manifest["details"]["seeds"][s]["eval_loss"] for s in ("0", "1", "2")]
    mean, high = statistics.mean(losses), statistics.mean(losses) + 4.302653 * statistics.stdev(losses) / 3**0.5
    assert statistics.stdev(losses) > 0, f"three seeds should not agree exactly: {losses}"
    assert (m["eval_loss"], m["eval_loss_ci_high"]) == (pytest.approx(mean), pytest.approx(high, abs=1e-6))

    bar = round((mean + high) / 2, 6)
    stage["gates"] = [{"metric": "eval_loss", "max": bar}]  # on the mean: passes (cached, gates re-checked)
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 0
    stage["gates"] = [{"metric": "eval_loss", "max": bar, "bound": "upper_ci"}]  # on the upper bound: fails
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 3
    assert "eval_loss_ci_high" in capsys.readouterr().err
