import os
from pathlib import Path

import pytest

# Offline by design, in tests as in CI: nothing may reach the hub or send telemetry.
for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true",
                   "ORT_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
# `make test` runs two xdist workers on 2 cores: at torch's default of one thread per core, the two pools
# spin at each other's barriers (load 4 on 2 cores; a fresh-clone run's training fixtures stalled for minutes).
# One each, set before torch is first imported (subprocesses the tests start inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# No report PNGs unless a test asks for them (the `plots` fixture): ~100 runs would spend ~30 s drawing them.
os.environ["LIFECYCLE_PLOTS"] = "0"

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def tiny_pipeline(**overrides) -> dict:
    """A two-stage pipeline (finetune a 2-layer BERT from scratch, export to ONNX) on 300 short news
    texts: the smallest real run of the whole frame, ~15 s on 2 cores."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "data": {"news": {"format": "jsonl", "path": str(TESTS / "data" / "news_tiny.jsonl"),
                          "split": {"validation": 0.2, "test": 0.2}}},
        "task": {"data": "news", "max_length": 48},
        "stages": [
            {"kind": "finetune", "model": {"preset": "bert-tiny", "tokenizer": {"vocab_size": 800}},
             "train": {"epochs": 4, "batch_size": 32, "lr": 2e-3, "logging_steps": 2},
             "latency": {"runs": 5}, "gates": [{"metric": "accuracy", "min": 0.0}],
             # 4 epochs on 180 texts is a frame test, not a model: it may predict one class. The
             # default collapse gate (which stops such a model) is tested in test_finetune.
             "collapse_min": None},
            {"kind": "export", "latency": {"runs": 5},
             "gates": [{"metric": "accuracy", "max_drop": 0.02, "vs": "finetune"}]},
        ],
    }
    raw.update(overrides)
    return raw


def needs_shared_data(*parts: str):
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (../shared/data is only on project machines)")


@pytest.fixture
def plots(monkeypatch):
    """Runs in the test write report plots (see lifecycle.report.PLOTS_ENV)."""
    monkeypatch.setenv("LIFECYCLE_PLOTS", "1")


@pytest.fixture
def one_thread():
    """Two cores shared by several jobs: one intra-op torch thread avoids oversubscription stalls. Training
    test modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A quiet console: the suite ends with no warning it did not ask for. pyproject.toml's filterwarnings names
# the ones it asks to ignore, and a test that expects a warning catches it (pytest.warns). Any other
# warning fails the session once every test has run, with pytest's summary naming where it came from:
# silence it where it is raised (lifecycle.quiet, saying why it is harmless) or fix its cause. A check at
# the end, not filterwarnings = ["error"]: a warning raised as an error inside a library would change
# what the code under test does.
_UNEXPECTED_WARNINGS: list[str] = []


def pytest_warning_recorded(warning_message, when, nodeid, location):
    _UNEXPECTED_WARNINGS.append(f"{nodeid or when}: {warning_message.category.__name__}: {warning_message.message}")


def pytest_sessionfinish(session, exitstatus):
    if _UNEXPECTED_WARNINGS and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _UNEXPECTED_WARNINGS:
        terminalreporter.write_line(f"{len(_UNEXPECTED_WARNINGS)} unexpected warning(s) (the summary above says where): "
                                    "silence each where it is raised (lifecycle.quiet) or fix it; the session fails",
                                    red=True)
