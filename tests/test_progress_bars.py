"""A quiet console: every progress bar a run prints is named (`stage: 40%|...`, `tokenize train: ...`).
The adapt stage's evaluations before training used to open the Trainer's unnamed bars between named ones."""

from __future__ import annotations

import re

import pytest
from test_adapt import TRAIN, corpora, run  # noqa: F401  (corpora: the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
BAR = re.compile(r"^(?P<name>.*?)\s*\d+%\|")


def test_pretrain_and_adapt_print_only_named_bars(tmp_path, corpora, capfd):  # noqa: F811
    model = {"preset": "bert-tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64},
             "tokenizer": {"vocab_size": 400}}
    train = {**TRAIN, "max_steps": 4, "save_steps": 4}
    run(tmp_path, corpora, [
        {"kind": "pretrain", "data": "general", "model": model, "block_size": 32, "train": train},
        {"kind": "adapt", "data": "domain", "general_data": "general", "block_size": 32, "train": train},
    ])
    console = capfd.readouterr()
    bars = [m["name"] for line in (console.out + console.err).replace("\r", "\n").splitlines()
            if (m := BAR.match(line))]
    assert "adapt:" in bars and "pretrain:" in bars, bars
    assert all(name.endswith(":") for name in bars), sorted(set(bars))
