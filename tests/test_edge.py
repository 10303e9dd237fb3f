"""lifecycle.edge: the onnx-free external-data check, zip extraction rules, hash verification, and a
fresh virtualenv with only onnxruntime, tokenizers and numpy reproducing the pipeline's predictions."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_export import run_tiny, shared_workdir, tiny_pipeline

from lifecycle.artifact import Artifact
from lifecycle.bundle import write_bundle
from lifecycle.components.onnx import copy_runtime_files
from lifecycle.edge import BundleError, Predictor, check_external_data, external_data_locations

EDGE = Path(__file__).parents[1] / "lifecycle" / "edge"


@pytest.fixture(scope="session")
def onnx_workdir(tmp_path_factory):
    return shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def export_dir(onnx_workdir) -> Path:
    return run_tiny(onnx_workdir) / "export"


def _external_copy(export_dir: Path, dest: Path, location: str = "weights.bin") -> Path:
    """The export's model saved with every initializer in one external-data file, plus runtime files."""
    dest.mkdir(parents=True)
    copy_runtime_files(export_dir, dest)
    model = onnx.load(str(export_dir / "model.onnx"))
    onnx.save_model(model, str(dest / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return dest


def _relocate(model_dir: Path, location: str) -> None:
    """Point every external tensor at `location` (what a tampered bundle would do)."""
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, str(model_dir / "model.onnx"))


def test_external_data_inside_the_bundle_loads(export_dir, tmp_path):
    d = _external_copy(export_dir, tmp_path / "ext")
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    expected = [e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"]
    assert expected and external_data_locations(d / "model.onnx") == expected  # our reader == onnx's
    texts = ["Shares rose after the results", "The band released a new album"]
    np.testing.assert_allclose(Predictor.open(d).logits(texts), Predictor.open(export_dir).logits(texts), atol=1e-6)
    assert external_data_locations(export_dir / "model.onnx") == []


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink_file", "symlink_dir", "missing", "backslash"])
def test_external_data_outside_the_bundle_is_refused(export_dir, tmp_path, case):
    d = _external_copy(export_dir, tmp_path / "ext")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(d / "weights.bin", outside / "weights.bin")
    location = {"dotdot": "../outside/weights.bin", "absolute": str(outside / "weights.bin"),
                "symlink_file": "link.bin", "symlink_dir": "sub/weights.bin", "missing": "nothere.bin",
                "backslash": "..\\outside\\weights.bin"}[case]
    if case == "symlink_file":
        os.symlink(outside / "weights.bin", d / "link.bin")
    if case == "symlink_dir":
        os.symlink(outside, d / "sub")
    _relocate(d, location)
    with pytest.raises(BundleError, match="external data location"):
        Predictor.open(d)


def test_reader_walks_node_attributes_and_rejects_garbage(tmp_path):
    """External tensors can hide in node attributes (and subgraphs), not only in initializers."""
    from onnx import TensorProto, helper

    t = helper.make_tensor("c", TensorProto.FLOAT, [1], [0.0])
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("float_data")
    t.external_data.add(key="location", value="../../etc/passwd")
    inner = helper.make_graph([helper.make_node("Constant", [], ["y"], value=t)], "inner", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph([node], "g", [cond], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert external_data_locations(path) == ["../../etc/passwd"] * 2
    with pytest.raises(BundleError):
        check_external_data(path)
    path.write_bytes(b"\xff\xff\xff")
    with pytest.raises(BundleError, match="not a valid ONNX file"):
        external_data_locations(path)


def _zip(path: Path, members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((stat.S_IFLNK | 0o777) if name in symlinks else (stat.S_IFREG | 0o644)) << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "sub/../../evil.txt", "C:/evil.txt", "a\\..\\b"])
def test_zip_members_escaping_the_bundle_are_refused(tmp_path, name):
    with pytest.raises(BundleError, match="outside the bundle"):
        Predictor.open(_zip(tmp_path / "b.zip", {"model.onnx": b"x", name: b"x"}))


def test_zip_symlinks_duplicates_and_missing_manifest_are_refused(tmp_path, export_dir):
    with pytest.raises(BundleError, match="symlink"):
        Predictor.open(_zip(tmp_path / "a.zip", {"model.onnx": b"/etc/passwd"}, symlinks=("model.onnx",)))
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.writestr("model.onnx", b"a")
        with pytest.warns(UserWarning, match="Duplicate name"):  # the tampered bundle this case is about
            zf.writestr("model.onnx", b"b")
    with pytest.raises(BundleError, match="twice"):
        Predictor.open(tmp_path / "d.zip")
    plain = {n: (export_dir / n).read_bytes() for n in ("model.onnx", "tokenizer.json", "labels.json", "schema.json")}
    with pytest.raises(BundleError, match="needs manifest.json"):
        Predictor.open(_zip(tmp_path / "m.zip", plain))


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        members = {i.filename: zin.read(i.filename) for i in zin.infolist()}
        for name, data in change(members).items():
            zout.writestr(name, data)
    return dst


def test_tampered_or_padded_bundles_are_refused(export_dir, tmp_path):
    bundle = write_bundle(export_dir, tmp_path / "model.zip")
    assert Predictor.open(bundle).check() == 8

    def flip(m):
        data = bytearray(m["model.onnx"])
        data[len(data) // 2] ^= 0xFF
        return {**m, "model.onnx": bytes(data)}

    with pytest.raises(BundleError, match="sha256"):
        Predictor.open(_rewrite(bundle, tmp_path / "flipped.zip", flip))
    with pytest.raises(BundleError, match="not listed"):
        Predictor.open(_rewrite(bundle, tmp_path / "extra.zip", lambda m: {**m, "extra.onnx": b"x"}))
    with pytest.raises(BundleError, match="does not list tokenizer.json"):
        def unlist(m):
            manifest = json.loads(m["manifest.json"])
            del manifest["files"]["tokenizer.json"]
            return {**m, "manifest.json": json.dumps(manifest)}
        Predictor.open(_rewrite(bundle, tmp_path / "unlisted.zip", unlist))


def test_every_task_has_the_inputs_and_answers_kinds_the_predictor_dispatches_on():
    """A schema.json that does not name its kinds is dispatched by its task through KINDS (inputs kind, answers
    kind): every built-in task is there, every inputs kind has its class in INPUTS, and every answers kind but a
    generator's tokens has its answer function in ANSWERS."""
    from lifecycle import workloads
    from lifecycle.edge.answers import ANSWERS, KINDS
    from lifecycle.edge.kinds import INPUTS

    assert {t.name: (t.inputs_kind, t.answers_kind) for t in workloads.tasks()}.items() <= KINDS.items()
    assert {inputs for inputs, _ in KINDS.values()} == set(INPUTS)
    assert {answers for _, answers in KINDS.values()} <= set(ANSWERS) and ANSWERS["tokens"] is None


def test_a_task_the_runtime_does_not_know_is_refused_in_one_line(export_dir, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    copy_runtime_files(export_dir, d)
    shutil.copy2(export_dir / "model.onnx", d / "model.onnx")
    schema = json.loads((d / "schema.json").read_text())
    # a model written before schema.json named its kinds: the runtime knows them by its task only
    del schema["inputs_kind"], schema["answers_kind"]
    (d / "schema.json").write_text(json.dumps({**schema, "task": "video-classification"}))
    with pytest.raises(BundleError, match=r"schema.json: task 'video-classification' is not one this runtime "
                                          r"answers \(classification, embedding, .*\); open it with the lifecycle"):
        Predictor.open(d)


def test_check_detects_a_runtime_that_does_not_reproduce(export_dir, tmp_path):
    p = Predictor.open(write_bundle(export_dir, tmp_path / "model.zip"))
    p.manifest["sample_predictions"][0]["answer"]["score"] += 0.01
    with pytest.raises(BundleError, match=r"differs from the pipeline's for .*: answer.score: expected"):
        p.check()


@pytest.mark.slow
def test_fresh_venv_with_only_the_runtime_reproduces_the_pipeline(onnx_workdir, tmp_path):
    """A new virtualenv with onnxruntime, tokenizers and numpy (about a minute to install) opens the
    bundle with the edge/ folder copied alone, and predicts every test text as the pipeline reported."""
    run = run_tiny(onnx_workdir, {"kind": "quantize", "latency": {"runs": 3, "warmup": 1}, "min_speedup": None})
    art = Artifact.load(run / "quantize")
    bundle = write_bundle(run, tmp_path / "model.zip")
    from lifecycle import data as datalib

    p = tiny_pipeline()
    test = datalib.load(p.data["news"], p).splits["test"]
    (tmp_path / "texts.json").write_text(json.dumps(list(test["text"])))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "onnxruntime", "tokenizers", "numpy"], check=True,
                   capture_output=True)
    rt = tmp_path / "rt"
    rt.mkdir()
    # the runtime is one folder: no other lifecycle module travels
    shutil.copytree(EDGE, rt / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import json, sys\n"
        "import edge\n"
        "p = edge.Predictor.open(sys.argv[1])\n"
        "texts = json.load(open(sys.argv[2]))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx', 'lifecycle'))\n"
        "print(json.dumps({'labels': [x['label'] for x in p.predict(texts)], 'checked': p.check(), 'heavy': heavy}))\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", script, str(bundle), str(tmp_path / "texts.json")],
                         cwd=rt, check=True, capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", ""), "ORT_DISABLE_TELEMETRY": "1"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    labels = json.loads((art.path / "labels.json").read_text())
    assert got["heavy"] == [] and got["checked"] == 8
    assert got["labels"] == [labels[i] for i in art.manifest["details"]["test_predictions"]]
    accuracy = np.mean([labels.index(g) == y for g, y in zip(got["labels"], test["label"])])
    assert accuracy == pytest.approx(art.metrics["accuracy"])
    pip_list = subprocess.run([str(venv / "bin" / "pip"), "list"], capture_output=True, text=True).stdout
    assert "torch" not in pip_list and "\nonnx " not in pip_list and "lifecycle" not in pip_list


@pytest.mark.serial  # a timing against a timing: a neighbour's load would decide it
def test_a_session_timed_beside_another_is_not_slowed_by_its_spinning_threads(export_dir):
    """onnxruntime's threads spin after a run, waiting for the next one: alternated call by call with another
    2-thread session on 2 cores, a session measured about twice its own time (benchmarks/spinning.py), which
    skewed every interleaved comparison. Predictor stops them after each run."""
    from lifecycle.evaluation.latency import call_times

    a, b = (Predictor.open(export_dir, threads=2) for _ in range(2))
    feeds = a.encode(["a sentence of a few words to classify"] * 32, pad_to=64)
    call_a, call_b = (lambda: a.session.run(None, feeds)), (lambda: b.session.run(None, feeds))
    alone, alternating = [], []
    for _ in range(3):
        call_times(call_b, 20)
        alone += call_times(call_a, 40)[10:]  # after b's block: its threads' last spin left out
        for _ in range(30):
            alternating += call_times(call_a, 1)
            call_b()
    assert np.median(alternating) < 1.3 * np.median(alone), (np.median(alternating), np.median(alone))


# ---------------------------------------------------------------------------- request inputs (the service's checks)
def test_a_number_no_float_holds_is_a_row_error_naming_its_column():
    """A 400-digit integer in a numeric column raised OverflowError, which the service did not catch (a 500
    after its 30 s timeout): now the RowError every bad value gets, naming the column."""
    from lifecycle.edge import RowError, TablePreprocessing

    table = TablePreprocessing({"numeric": [{"name": "bill_mm", "mean": 40.0, "std": 5.0, "min": 30.0, "max": 60.0}],
                                "categorical": []})
    with pytest.raises(RowError, match=r"column 'bill_mm': number too large \(400 digits\)"):
        table.transform_rows([{"bill_mm": 42.0}, {"bill_mm": 10**399 * 9}])
    feeds, _ = table.transform_rows([{"bill_mm": 10**300}])  # large, but a float: clipped and counted, as before
    assert feeds["numeric"][0, 0] == pytest.approx(4.0)


def test_image_headers_are_read_without_decoding_and_a_request_has_a_pixel_budget():
    """What the service checks before a request takes a concurrency slot: each image's header (format, mode,
    size) and the request's pixels summed; decoding (load_image) comes after admission."""
    import io

    from PIL import Image

    from lifecycle.edge import MAX_REQUEST_PIXELS, ImageError, check_request_pixels, load_image, open_image

    buf = io.BytesIO()
    Image.new("L", (4096, 4096)).save(buf, "PNG")
    black = buf.getvalue()  # 16 M pixels in ~16 kB
    opened = [open_image(black) for _ in range(63)]
    # headers only, checked by structure rather than by time: PIL keeps an image's undecoded tiles until it
    # loads it (decoding all 63 costs seconds)
    assert all(im.size == (4096, 4096) and im.tile for im in opened)
    check_request_pixels(opened[:2], MAX_REQUEST_PIXELS)  # two of the largest single images fit the default
    with pytest.raises(ImageError, match=r"hold 1056964608 pixels .*the limit is 33554432 per request "
                                         r"\(max_request_pixels\)") as refused:
        check_request_pixels(opened, MAX_REQUEST_PIXELS)
    assert refused.value.status == 413
    assert not load_image(open_image(black)).tile  # and decoding consumes them
    truncated = open_image(black[: len(black) // 2])  # the header is whole: it opens
    with pytest.raises(ImageError, match="could not be decoded") as bad:
        load_image(truncated)
    assert bad.value.status == 422
