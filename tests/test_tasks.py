"""Tasks as plug-ins (lifecycle.tasks, declared in the wings of lifecycle.workloads): every task-specific
decision is declared by one task module, and nothing outside lifecycle/tasks/ and lifecycle/workloads/
branches on which task it is. The plug-ins' behaviour is exercised end
to end by the export, quantize, serving, bundle and contrastive tests; here: the contract itself."""

import dataclasses
import re
from pathlib import Path

import pytest

from lifecycle import tasks, workloads
from lifecycle.edge import Predictor
from lifecycle.edge.answers import KINDS
from lifecycle.schema import ONNX_HOLDS
from lifecycle.stages import export, quantize

ROOT = Path(__file__).resolve().parents[1]
# `task == ...`, `x.type != ...`, `... == task`, `task in ("...", ...)`, `== "embedding"`: a decision taken
# on which task this is. (`model_type == "bert"` is about an architecture and does not match.)
NAMES = "|".join(workloads.task_names())
BRANCH = re.compile(rf"""(\btask\w*|\.type|\btype)\s*(==|!=)|(==|!=)\s*[\w.]*\b(task|type)\b"""
                    rf"""|\b(task|type)\s+(not\s+)?in\s+[(\[{{]|(==|!=)\s*["']({NAMES})["']""")


# A decision taken on a modality: a data source's or a model's kind compared with a literal, or tested
# through which preprocessor a predictor holds.
KINDS_NAMED = "text|table|image|rows|images|prompts|labels|vector|value|score|tokens"
MODALITY = re.compile(rf"""\b(reads|inputs_kind|answers_kind)["'\]]*\s*(==|!=)|["']({KINDS_NAMED})["']\s*(==|!=)\s*\w"""
                      rf"""|\b(reads|inputs_kind|answers_kind)\s+(not\s+)?in\s+[(\[{{]"""
                      rf"""|\.(table|image|generation)\s+is\s+(not\s+)?None""")
# Two task names side by side in a literal: a list of which tasks something applies to.
TASK_TUPLE = re.compile(rf"""["']({NAMES})["']\s*,\s*["']({NAMES})["']""")
# Where each kind has its own module, as each workload has its folder: the wings and the task contract, the
# data layer (one module per kind of source), the edge runtime's inputs modules.
ALLOWED = ("lifecycle/workloads/", "lifecycle/tasks/", "lifecycle/data/", "lifecycle/edge/text_inputs.py",
           "lifecycle/edge/table_inputs.py", "lifecycle/edge/image_inputs.py", "lifecycle/edge/decoding.py",
           "lifecycle/edge/answers.py")


def branches(pattern) -> list[str]:
    found = []
    for f in sorted([*(ROOT / "lifecycle").rglob("*.py"), *(ROOT / "serving").glob("*.py")]):
        where = f.relative_to(ROOT).as_posix()
        if where.startswith(ALLOWED):
            continue
        found += [f"{where}:{i}: {line.strip()}" for i, line in enumerate(f.read_text().splitlines(), 1)
                  if pattern.search(line)]
    return found


def test_no_task_branch_outside_the_task_modules():
    found = branches(BRANCH)
    assert not found, "ask the task's declaration (lifecycle.workloads) instead:\n" + "\n".join(found)


def test_no_modality_branch_or_task_list_outside_the_workloads():
    found = branches(MODALITY) + branches(TASK_TUPLE)
    assert not found, ("dispatch on a table keyed by kind, or ask the task's declaration (lifecycle.workloads), "
                       "instead:\n" + "\n".join(found))


def test_the_branch_patterns_catch_what_they_are_for():
    for line in ('if task == "embedding":', 'if cfg.task.type != "classification":', 'x if "embedding" == task else y',
                 'if predictor.task in ("embedding", "generation"):', 'if head != "embedding":'):
        assert BRANCH.search(line), line
    for line in ('if config.model_type == "bert":', "for task in tasks.REGISTRY:", "plugin = tasks.get(task.type)"):
        assert not BRANCH.search(line), line
    for line in ('if self.inputs_kind == "rows":', 'if source.reads != "text":', 'if predictor.image is not None:',
                 'elif plugin.reads in ("table", "image"):', 'if "images" == kind:',
                 'if endpoint["answers_kind"] == "tokens":'):
        assert MODALITY.search(line), line
    for line in ('if stage.kind == "finetune":', 'if source.reads in LOADERS:', 'reads = "table"'):
        assert not MODALITY.search(line), line
    assert TASK_TUPLE.search('tasks = ("classification", "tabular-classification")')
    assert not TASK_TUPLE.search('tasks = workloads.trained_tasks("finetune")')


def test_every_task_type_has_one_complete_plug_in():
    assert set(workloads.task_names()) == set(KINDS)  # the built-in wings declare every task the edge knows
    for name in workloads.task_names():
        plugin = workloads.task(name)
        assert plugin.name == name and isinstance(plugin, tasks.Task)
        assert plugin.artifacts.onnx_holds in ONNX_HOLDS and plugin.artifacts.export_reads and plugin.artifacts.export_hint
        assert plugin.answers.output and plugin.edge.route.startswith("/") and plugin.scores
        assert callable(getattr(Predictor, plugin.edge.method, None)), f"lifecycle.edge has no {plugin.edge.method}()"
        for part in ("torch_model", "reference", "score"):
            assert callable(getattr(plugin, part)), f"{name} declares no {part}"
        # every metric the task reports can be named by a gate on the stages that report it
        assert set(plugin.metrics) <= quantize.Config(kind="quantize").metric_names()
        assert set(plugin.scores) <= export.Config(kind="export").metric_names()


def declared(task) -> list[str]:
    """The fields a task declaration sets (the required ones, and the optional ones given another value)."""
    return [f.name for f in dataclasses.fields(task)
            if f.default is dataclasses.MISSING or getattr(task, f.name) != f.default]


def test_a_task_is_a_small_declaration_of_two_known_kinds():
    inputs = {t.inputs_kind: t.inputs for t in workloads.tasks()}
    answers = {t.answers_kind: t.answers for t in workloads.tasks()}
    assert set(inputs) == {"text", "prompts", "rows", "images", "audio"}
    assert set(answers) == {"labels", "vector", "value", "score", "tokens"}
    assert inputs["text"] is tasks.TEXT and answers["labels"] is tasks.LABELS and answers["vector"] is tasks.VECTOR
    for task in workloads.tasks():
        assert len(declared(task)) <= 12, f"{task.name} declares {declared(task)}"
        # one object per kind: every task on the same kind holds that very object, not a copy or a variant
        assert isinstance(task.inputs, tasks.Inputs) and task.inputs is inputs[task.inputs_kind]
        assert isinstance(task.answers, tasks.Answers) and task.answers is answers[task.answers_kind]


def test_no_task_inherits_behaviour():
    # every declaration is a Task and nothing else: no base that carries a default (text's), no mixin
    for task in workloads.tasks():
        assert type(task).__mro__ == (tasks.Task, object), f"{task.name}: {type(task).__mro__}"
        for kind in (task.inputs, task.answers, task.artifacts, task.edge, task.settings):
            assert type(kind).__mro__[1:] == (object,), f"{task.name}: {type(kind).__mro__}"


def test_routes_and_edge_methods_are_distinct():
    # the service builds its one endpoint from the served model's route and kinds (tests/test_service_endpoints.py)
    plugins = workloads.tasks()
    assert len({p.edge.route for p in plugins}) == len({p.edge.method for p in plugins}) == len(plugins)


# per answers kind: an answer, one within 0.01 of it (None: tokens are equal or not) and one that differs
ANSWERS = {
    "labels": ({"label": "a", "scores": {"a": 0.75, "b": 0.25}}, {"label": "a", "scores": {"a": 0.745, "b": 0.255}},
               {"label": "b", "scores": {"a": 0.25, "b": 0.75}}),
    "vector": ([0.6, 0.8], [0.605, 0.795], [0.8, 0.6]),
    "value": ({"value": 152.5}, {"value": 152.505}, {"value": 149.0}),
    "score": ({"anomaly_score": 0.25}, {"anomaly_score": 0.255}, {"anomaly_score": 0.75}),
    "tokens": ({"tokens": [5, 7, 9], "text": "a b c"}, None, {"tokens": [5, 7, 8], "text": "a b d"}),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_answer_comparison_tells_answers_that_differ_apart(name):
    plugin = workloads.task(name)
    same, close, other = ANSWERS[plugin.answers_kind]
    assert plugin.answers_agree(same, same, 0.0) == (True, 0.0)
    if close is not None:
        agree, diff = plugin.answers_agree(close, same, 0.01)
        assert agree and 0 < diff <= 0.01
        assert not plugin.answers_agree(close, same, 0.001)[0]  # the same pair under a tighter tolerance
    agree, diff = plugin.answers_agree(other, same, 0.01)
    assert not agree and diff > 0.01


def test_a_pipeline_without_a_type_is_classification():
    from lifecycle.schema import Task

    assert Task(data="x").type == "classification"


def test_scoring_reads_the_loaded_data_not_the_disk(tmp_path, monkeypatch):
    """A task scores from the data the stage loaded once (`tasks.Scoring`): the anomaly scorer's training
    split, which marks what an anomaly is, is not read again on every call (each quantize rung scores)."""
    import numpy as np

    from lifecycle import data
    from lifecycle.data.sources import DataSource

    class View:  # the pipeline view the data layer reads
        base, seed, data = tmp_path, 0, {}

        def resolve(self, path):
            return tmp_path / path

    table = data.load(DataSource(format="sklearn", dataset="breast_cancer", table={"target": "target"}), View())
    monkeypatch.setattr(data, "load", lambda *a: pytest.fail("score() read the data source again"))

    class Constant:  # a scorer that rates every row alike: no better than chance
        def logits(self, rows):
            return np.zeros((len(rows), 1), dtype=np.float32)

    scoring = tasks.Scoring(pipeline=None, data=table, split="test", reference=np.zeros((len(table.splits["test"]), 1)))
    metrics, outputs = workloads.task("tabular-anomaly").score(Constant(), scoring)
    assert metrics["auroc"] == 0.5 and metrics["anomaly_score_max_abs_diff"] == 0.0 and len(outputs) == len(scoring.rows)


def test_text_embeddings_score_from_the_loaded_data(monkeypatch):
    """kNN accuracy reads the train split the stage loaded, not the source again (each quantize rung scores)."""
    import types

    import numpy as np

    from lifecycle import data
    from lifecycle.data.sources import DataSource
    from lifecycle.schema import Task

    class View:
        base, seed, data = ROOT, 0, {}

        def resolve(self, path):
            return ROOT / path

    news = data.load(DataSource(format="jsonl", path="tests/data/news_tiny.jsonl",
                                split={"validation": 0.2, "test": 0.2}), View())
    monkeypatch.setattr(data, "load", lambda *a: pytest.fail("score() read the data source again"))

    label_of = {t: y for split in news.splits.values() for t, y in zip(split["text"], split["label"])}
    n_labels = max(label_of.values()) + 1

    class Oracle:  # embeds a text as its own label: its train neighbours all share it, so kNN is exact
        def embed(self, texts):
            return np.eye(n_labels, dtype=np.float32)[[label_of[t] for t in texts]]

    pipeline = types.SimpleNamespace(task=Task(type="embedding", data="news"))
    scoring = tasks.Scoring(pipeline=pipeline, data=news, split="test")
    metrics, outputs = workloads.task("embedding").score(Oracle(), scoring)
    assert metrics["knn_accuracy"] == 1.0 and metrics["knn_test_texts"] == len(outputs) == len(news.splits["test"])
