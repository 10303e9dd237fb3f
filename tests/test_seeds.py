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


def test_lower_ci_gate_fails_where_the_mean_passes(tmp_path, capsys):
    """Three seeds of a deliberately small, noisy fine-tune: the mean clears a bar its lower bound does not."""
    raw = tiny_pipeline()
    raw["stages"] = raw["stages"][:1]
    stage = raw["stages"][0]
    stage["seeds"] = [0, 1, 2]
    stage["train"]["epochs"] = 2
    stage["gates"] = [{"metric": "accuracy", "min": 0.0, "bound": "lower_ci"}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "tiny" / "finetune" / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["n_seeds"] == 3 and set(manifest["details"]["seeds"]) == {"0", "1", "2"}
    # the bar comes from the three seeds' own accuracies, by hand (t(0.975, 2) = 4.302653), not from the
    # aggregate under test: halfway between their mean and the lower end of their 95% interval
    accs = [manifest["details"]["seeds"][s]["accuracy"] for s in ("0", "1", "2")]
    mean, low = statistics.mean(accs), statistics.mean(accs) - 4.302653 * statistics.stdev(accs) / 3**0.5
    assert statistics.stdev(accs) > 0, f"three seeds should not agree exactly: {accs}"
    assert (m["accuracy"], m["accuracy_ci_low"]) == (pytest.approx(mean), pytest.approx(low, abs=1e-6))

    bar = round((mean + low) / 2, 6)
    stage["gates"] = [{"metric": "accuracy", "min": bar}]  # on the mean: passes (cached, gates re-checked)
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 0
    stage["gates"] = [{"metric": "accuracy", "min": bar, "bound": "lower_ci"}]  # on the lower bound: fails
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--workdir", str(tmp_path)]) == 3
    assert "accuracy_ci_low" in capsys.readouterr().err
