"""The service's one inference endpoint, built from the served model's kinds, without a server: the serving
config lifecycle.serving writes (route, kinds, request key from schema.json), the BentoML service it defines
(its APIs and OpenAPI document, from serving/service.py imported as `bentoml serve` imports it, in a
subprocess), and the request checks of an inputs kind the service does not know (a plug-in workload's),
through the real RequestLimits middleware in front of a stand-in for BentoML's app."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import pytest

from lifecycle import serving
from lifecycle.serving.source import endpoint

# schema.json as each task writes it (identity()); "regression, before kinds": a model exported before schema.json
# recorded its kinds (lifecycle.edge.answers.KINDS gives them); "plug-in": a workload from outside the library.
SCHEMAS = {
    "classifier": {"task": "classification", "inputs_kind": "text", "answers_kind": "labels", "method": "predict",
                   "route": "/classify"},
    "regression, before kinds": {"task": "tabular-regression", "method": "regress_rows", "route": "/regress"},
    "image embedder": {"task": "image-embedding", "inputs_kind": "images", "answers_kind": "vector",
                       "method": "embed_images", "route": "/embed_image"},
    "generator": {"task": "generation", "inputs_kind": "prompts", "answers_kind": "tokens", "method": "generate",
                  "route": "/generate"},
    "plug-in": {"task": "toy-echo", "inputs_kind": "vectors", "answers_kind": "words", "method": "transcribe",
                "route": "/transcribe", "request_key": "clips"},
}
# name -> (POST routes, the request's list key and one item's schema, one answer's schema)
EXPECTED = {
    "classifier": (["/classify"], "texts", {"type": "string"}, {"$ref": "#/components/schemas/Prediction"}),
    "regression, before kinds": (["/regress"], "rows", {"type": "object", "additionalProperties": True},
                                 {"$ref": "#/components/schemas/Regression"}),
    "image embedder": (["/embed_image"], "images", {"type": "string"}, {"type": "array", "items": {"type": "number"}}),
    "generator": (["/generate", "/generate_stream"], "prompts", {"type": "string"},
                  {"$ref": "#/components/schemas/Generated"}),
    "plug-in": (["/transcribe"], "clips", {}, {}),
}

PROBE = """
import importlib.util, json, os, sys
sys.path.insert(0, sys.argv[1])
out = {}
for name, config in json.loads(sys.argv[2]).items():
    os.environ["LIFECYCLE_SERVING_CONFIG"] = config
    spec = importlib.util.spec_from_file_location("service_" + str(len(out)), sys.argv[1] + "/service.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out[name] = {"apis": sorted(module.Classifier.apis), "openapi": module.Classifier.openapi_spec.asdict()}
print(json.dumps(out))
"""


def model_dir(tmp: Path, schema: dict) -> Path:
    """A model directory as far as the serving config reads it: its schema.json."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "schema.json").write_text(json.dumps(schema))
    return tmp


def test_the_service_defines_one_endpoint_typed_by_the_models_kinds(tmp_path):
    configs = {}
    for i, (name, schema) in enumerate(SCHEMAS.items()):
        served = serving.Served(model_dir(tmp_path / str(i), schema), name, "v1")
        configs[name] = str(serving.write_config(served, serving.ServingSettings(), tmp_path / f"{i}.json"))
    out = subprocess.run([sys.executable, "-c", PROBE, str(serving.SERVICE_DIR), json.dumps(configs)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    services = json.loads(out.stdout.splitlines()[-1])
    for name, (routes, key, item, answer) in EXPECTED.items():
        spec = services[name]["openapi"]
        posts = {path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops}
        assert sorted(posts) == routes, name
        assert services[name]["apis"] == [r.strip("/") for r in routes], name  # the client's method names
        body = posts[routes[0]]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == [key] and body["properties"][key]["items"] == item, name
        answers = posts[routes[0]]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answers["type"] == "array" and answers["items"] == answer, name


def test_the_serving_config_names_the_endpoint_from_schema_json(tmp_path):
    config = serving.write_config(serving.Served(model_dir(tmp_path / "m", SCHEMAS["regression, before kinds"]),
                                                 "m", "v1"), serving.ServingSettings(), tmp_path / "serving.json")
    assert json.loads(config.read_text())["model"]["endpoint"] == {
        "route": "/regress", "task": "tabular-regression", "inputs_kind": "rows", "answers_kind": "value",
        "request_key": "rows", "method": "regress_rows"}
    bundle = tmp_path / "plugin.zip"  # a bundle zip: read in place, nothing extracted
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("schema.json", json.dumps(SCHEMAS["plug-in"]))
    assert endpoint(bundle) == {"route": "/transcribe", "task": "toy-echo", "inputs_kind": "vectors",
                                "answers_kind": "words", "request_key": "clips", "method": "transcribe"}
    # a missing or broken schema.json: the defaults Predictor reads (which then refuses to open the model)
    assert endpoint(tmp_path / "nowhere")["route"] == "/classify"


# ------------------------------------------------------------------------------- a plug-in's requests
PLUGIN = {"route": "/transcribe", "task": "toy-echo", "inputs_kind": "vectors", "answers_kind": "words",
          "request_key": "clips", "method": "transcribe"}


async def stand_in_app(scope, receive, send):
    """BentoML's part: the model's route answers the body it was handed; any other path is Starlette's 404."""
    message = await receive()
    found = scope["path"] == PLUGIN["route"]
    body = message.get("body", b"") if found else b"Not Found"
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": [(b"content-type", b"application/json" if found else b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def post_all(limits, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limits), base_url="http://service") as client:
            return [await client.post(path, **kwargs) for path, kwargs in requests]

    return anyio.run(main)


@pytest.fixture
def request_limits(monkeypatch):
    monkeypatch.syspath_prepend(str(serving.SERVICE_DIR))  # a sibling of service.py, imported as BentoML does
    return importlib.import_module("request_limits")


def test_a_plugin_inputs_kind_is_checked_as_a_json_list_under_its_key(request_limits):
    settings = serving.ServingSettings(max_texts=4).resolved()
    served = request_limits.Served(predictor=SimpleNamespace())  # its inputs have no check of their own
    limits = request_limits.RequestLimits(stand_in_app, settings, served, PLUGIN)
    ok, empty, over, other_key, not_json, plain, other_route = post_all(limits, [
        ("/transcribe", {"json": {"clips": [1, "a", {"x": [2]}]}}),
        ("/transcribe", {"json": {"clips": []}}),
        ("/transcribe", {"json": {"clips": [0] * 5}}),
        ("/transcribe", {"json": {"texts": ["a"]}}),
        ("/transcribe", {"content": b'{"clips": [', "headers": {"content-type": "application/json"}}),
        ("/transcribe", {"content": b'{"clips": [1]}', "headers": {"content-type": "text/plain"}}),
        ("/classify", {"json": {"texts": ["a"]}}),
    ])
    assert ok.status_code == 200 and ok.json() == {"clips": [1, "a", {"x": [2]}]}  # handed on unchanged
    assert empty.status_code == 422 and '"clips" must be a non-empty list' in empty.json()["error"]
    assert over.status_code == 422 and "has 5 items; the limit is 4" in over.json()["error"]
    assert other_key.status_code == 422 and 'exactly one key, "clips"' in other_key.json()["error"]
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    assert plain.status_code == 415 and "must be application/json" in plain.json()["error"]
    assert other_route.status_code == 404
    assert other_route.json() == {"error": "Not Found: this server serves a toy-echo model: POST /transcribe"}


def test_a_plugin_inputs_kind_with_its_own_request_check(request_limits):
    seen = []

    def check_request(payload, max_items):
        seen.append(max_items)
        return None if all(isinstance(c, str) for c in payload.get("clips", [None])) else "a clip is base64 audio"

    served = request_limits.Served(predictor=SimpleNamespace(inputs=SimpleNamespace(check_request=check_request)))
    limits = request_limits.RequestLimits(stand_in_app, serving.ServingSettings(max_texts=3).resolved(), served, PLUGIN)
    ok, refused = post_all(limits, [("/transcribe", {"json": {"clips": ["AAAA"]}}),
                                    ("/transcribe", {"json": {"clips": [7]}})])
    assert ok.status_code == 200 and ok.json() == {"clips": ["AAAA"]}
    assert refused.status_code == 422 and refused.json() == {"error": "a clip is base64 audio"}
    assert seen == [3, 3]
