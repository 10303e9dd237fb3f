"""The edge predictor dispatches on the inputs and answers kinds (schema.json's "inputs_kind" / "answers_kind",
else its task's KINDS) with no modality branch, and a package outside lifecycle adds its own kinds through
entry points: a real toy distribution (dist-info + module) on sys.path and a real ONNX graph run by onnxruntime."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lifecycle.edge import BundleError, Predictor
from lifecycle.edge.kinds import INPUTS, _entry_points, inputs_kind
from lifecycle.edge.predictor import _kinds
from lifecycle.edge.text_inputs import TextInputs

EDGE = Path(__file__).parents[1] / "lifecycle" / "edge"
WEIGHTS = np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.25]], dtype=np.float32)

TOY_MODULE = '''
import numpy as np


class VectorInputs:
    """Numbers fed to the graph as they are: no preprocessor file."""

    max_length = 0

    def __init__(self, root, schema):
        self.width = schema["width"]

    def sample(self):
        return [0.0] * self.width

    def recorded(self, entry):
        return entry["vector"]

    def feeds(self, predictor, items, pad_to=None):
        return {"features": np.asarray(items, dtype=np.float32).reshape(-1, self.width)}

    def outputs(self, predictor, items, batch_size):
        return predictor.session.run(None, self.feeds(predictor, items))[0]


def signs(outputs, labels):
    return [{"label": labels[int(row.argmax())], "signs": [1 if v > 0 else -1 for v in row.tolist()]}
            for row in outputs]
'''

ENTRY_POINTS = """[lifecycle.edge.inputs]
vectors = {module}:VectorInputs
text = {module}:VectorInputs
broken = {module}_missing:VectorInputs

[lifecycle.edge.answers]
toy-sign = {module}:signs
"""


@pytest.fixture
def toy_package(tmp_path, monkeypatch, request):
    """A distribution "toy" installed on sys.path (dist-info with entry points, and its module)."""
    module = f"toy_edge_{abs(hash(request.node.name))}"  # a fresh module per test: sys.modules keeps the last
    site = tmp_path / "site"
    (site / "toy-0.1.dist-info").mkdir(parents=True)
    (site / "toy-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy\nVersion: 0.1\n")
    (site / "toy-0.1.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS.format(module=module))
    (site / f"{module}.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(site))
    _entry_points.cache_clear()
    yield module
    _entry_points.cache_clear()
    sys.modules.pop(module, None)


def toy_model(root: Path, **schema) -> Path:
    """A real graph: scores = features (batch, 3) @ WEIGHTS, with a schema.json naming the plug-in's kinds."""
    root.mkdir()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], ["scores"])], "toy",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(WEIGHTS, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (root / "model.onnx").write_bytes(model.SerializeToString())
    (root / "labels.json").write_text(json.dumps(["down", "up"]))
    (root / "schema.json").write_text(json.dumps({
        "task": "toy", "method": "answer", "route": "/toy", "preprocessor": None, "width": 3,
        "inputs_kind": "vectors", "answers_kind": "toy-sign", **schema}))
    return root


def test_the_predictor_has_no_modality_branch():
    """Dispatch goes through the inputs object (lifecycle.edge.kinds): predictor.py compares no kind to a literal."""
    source = (EDGE / "predictor.py").read_text()
    kinds = "text|prompts|rows|images|labels|vector|value|score|tokens"
    assert not re.findall(rf"""(?:==|!=|\bin)\s*\(?\s*["'](?:{kinds})["']""", source)
    assert not re.findall(r"""["'](?:row|image|text)["']\s+in\s+e\b""", source)  # check()'s recorded entries


def test_a_plug_in_kind_answers_through_onnxruntime(toy_package, tmp_path):
    p = Predictor.open(toy_model(tmp_path / "toy"))
    x = [[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]
    scores = np.asarray(x, dtype=np.float32) @ WEIGHTS
    want = [{"label": ["down", "up"][int(s.argmax())], "signs": [1 if v > 0 else -1 for v in s]} for s in scores]
    assert (p.inputs_kind, p.answers_kind, type(p.inputs).__module__) == ("vectors", "toy-sign", toy_package)
    assert p.answer(x) == want and p.answers(x) == want  # the task names answer() as its method
    np.testing.assert_allclose(p.logits(x), scores, rtol=1e-6)
    assert p.sample_input() == [0.0, 0.0, 0.0] and p.encode(x)["features"].shape == (3, 3)
    assert p.tokenizer is None and p.table is None and p.image is None and p.max_length == 0


def test_a_plug_in_model_re_checks_its_recorded_predictions(toy_package, tmp_path):
    """check() turns each recorded entry into an input with the plug-in's recorded(), inside a verified bundle
    directory that holds no preprocessor file (schema.json "preprocessor": null)."""
    root = toy_model(tmp_path / "toy")
    vector = [2.0, -1.0, 0.5]
    answer = Predictor.open(root).answer([vector])[0]
    files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in root.iterdir()}
    manifest = {"files": files, "sample_predictions": [{"vector": vector, "answer": answer}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert Predictor.open(root).check() == 1
    manifest["sample_predictions"][0]["answer"] = {**answer, "label": "sideways"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"differs from the pipeline's for '\[2.0, -1.0, 0.5\]': answer.label"):
        Predictor.open(root).check()


def test_schema_kinds_override_the_tasks_kinds(toy_package, tmp_path):
    """A known task ("classification": text, labels by KINDS) whose schema.json names other kinds is opened by
    those kinds; one naming only its answers kind keeps the task's inputs kind."""
    p = Predictor.open(toy_model(tmp_path / "toy", task="classification"))
    assert (p.inputs_kind, p.answers_kind) == ("vectors", "toy-sign")
    assert p.answer([[1.0, 0.0, 0.0]])[0]["label"] == "down"  # scores [1, -2]
    assert _kinds({"task": "tabular-regression", "answers_kind": "toy-sign"}, "schema.json") == ("rows", "toy-sign")
    assert _kinds({"task": "tabular-regression"}, "schema.json") == ("rows", "value")


@pytest.mark.parametrize("field, kind, builtin", [("inputs_kind", "video", "text, prompts, rows, images, audio"),
                                                  ("answers_kind", "bounding-boxes", "labels, vector, value")])
def test_an_unknown_kind_is_refused_in_one_line(toy_package, tmp_path, field, kind, builtin):
    root = toy_model(tmp_path / "toy", **{field: kind})
    with pytest.raises(BundleError) as err:
        Predictor.open(root)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{root / 'schema.json'}: {field} '{kind}' is not built in")
    assert builtin in message and "install the workload package" in message


def test_a_plug_in_that_fails_to_load_is_refused_in_one_line(toy_package, tmp_path):
    root = toy_model(tmp_path / "toy", inputs_kind="broken")
    with pytest.raises(BundleError) as err:
        Predictor.open(root)
    assert "\n" not in str(err.value)
    assert re.fullmatch(rf"{re.escape(str(root / 'schema.json'))}: inputs_kind 'broken' is {toy_package}_missing:"
                        r"VectorInputs \(entry point group 'lifecycle.edge.inputs'\), which fails to load: "
                        r"ModuleNotFoundError: .*; reinstall the package that provides it", str(err.value))


def test_a_plug_in_cannot_replace_a_built_in_kind(toy_package):
    """The toy distribution also declares an inputs kind "text": the built-in one is kept, and the plug-in's
    own kind is found."""
    assert inputs_kind("text", "schema.json") is INPUTS["text"] is TextInputs
    assert inputs_kind("vectors", "schema.json").__module__ == toy_package
