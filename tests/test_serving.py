"""The BentoML service, for real: a `bentoml serve` process on 127.0.0.1 serving the tiny pipeline's ONNX
export, talked to with bentoml.SyncHTTPClient and httpx. Every bad request is followed by a liveness
check and a valid request. The request rules run against /classify (a classifier) and /embed (a
second server on a tiny contrastive embedding model), through the parametrized `endpoint` fixture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
import yaml
from test_contrastive import SIMCSE, embedding_pipeline

from lifecycle import LifecycleError, config, pipeline, serving
from lifecycle.artifact import Artifact
from lifecycle.bundle import write_bundle
from lifecycle.edge import Predictor

TINY = Path(__file__).parent / "pipelines" / "tiny.yaml"
LIMITS = {"max_concurrency": 2, "timeout_s": 2.0, "max_texts": 4, "max_body_bytes": 4096, "over_length": "reject",
          "max_connection_age_s": 0.3}
VALID = {"texts": ["the striker scored twice in the final", "shares fell after the profit warning"]}


def run_tiny(workdir: Path, extra_stages: list[dict] | None = None):
    """The tiny pipeline (finetune -> export), 1 epoch, no accuracy gate: only the plumbing matters here.
    Stages are cached per workdir, so test files sharing one workdir train once."""
    raw = yaml.safe_load(TINY.read_text())
    for item in ("stages.finetune.gates=[]", "stages.finetune.collapse_min=null",  # 1 epoch: one class, by design
                 "stages.finetune.train.epochs=1", "stages.export.gates=[]"):
        config.apply_override(raw, item)
    raw["stages"] += extra_stages or []
    pipe = config.build(raw, base_dir=TINY.parent)
    pipeline.run(pipe, workdir=workdir, echo=lambda *_: None)
    return workdir / pipe.name


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return run_tiny(tmp_path_factory.getbasetemp() / "serving-runs")


@pytest.fixture(scope="session")
def embedding_run_dir(tmp_path_factory):
    """A tiny SimCSE encoder (2 steps) exported with pooling in the graph: what /embed serves."""
    workdir = tmp_path_factory.getbasetemp() / "serving-embedding-runs"
    stages = [{**SIMCSE, "train": {**SIMCSE["train"], "max_steps": 2}},
              {"kind": "export", "latency": {"runs": 3, "warmup": 1, "batch32": False}}]
    pipe = config.build(embedding_pipeline(workdir, stages), base_dir=workdir)
    pipeline.run(pipe, workdir=workdir, echo=lambda *_: None)
    return workdir / pipe.name


def start_server(run_dir, tmp):
    cfg = serving.write_config(serving.resolve(run_dir), serving.ServingSettings(**LIMITS), tmp / "serving.json")
    return serving.Server(cfg, log=tmp / "server.log")


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    with start_server(run_dir, tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def embed_server(embedding_run_dir, tmp_path_factory):
    with start_server(embedding_run_dir, tmp_path_factory.mktemp("embed-server")) as srv:
        yield srv


@pytest.fixture(scope="module", params=["/classify", "/embed"], ids=["classify", "embed"])
def endpoint(request):
    """(server, client, route): the request rules are the same on both routes. Module scope: pytest
    runs every /classify case, then starts the embedding server once for the /embed cases."""
    srv = request.getfixturevalue("server" if request.param == "/classify" else "embed_server")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        yield srv, c, request.param


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def assert_healthy(client: httpx.Client, route: str = "/classify") -> None:
    assert client.get("/livez").status_code == 200
    r = client.post(route, json=VALID)
    assert r.status_code == 200, r.text
    assert len(r.json()) == len(VALID["texts"])


def assert_error(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert "error" in r.json() and "Traceback" not in r.text and 'File "' not in r.text


# ------------------------------------------------------------------------------------------- good input
def test_classify_matches_in_process_predictor(server, client, run_dir):
    expected = Predictor.open(run_dir / "export").predict(VALID["texts"])
    got = client.post("/classify", json=VALID).json()
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected):
        assert g["score"] == pytest.approx(e["score"], abs=1e-5)
        assert set(g["scores"]) == set(e["scores"]) and sum(g["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    for text, e in zip(VALID["texts"], expected):  # one text runs on the event loop, several in a thread
        alone = client.post("/classify", json={"texts": [text]}).json()[0]
        assert alone["label"] == e["label"] and alone["score"] == pytest.approx(e["score"], abs=1e-5)
    with bentoml.SyncHTTPClient(server.url) as bc:
        assert [p["label"] for p in bc.classify(texts=VALID["texts"])] == [e["label"] for e in expected]


def test_answers_are_written_as_bentomls_output_handling_writes_them(client):
    """An unbatched answer is serialised by the service itself (answers_api): the bytes BentoML's output
    handling writes (json.dumps of the validated answers, as a batched answer still is), with its length."""
    r = client.post("/classify", json=VALID)
    assert r.headers["content-type"] == "application/json" and int(r.headers["content-length"]) == len(r.content)
    assert r.content == json.dumps(r.json()).encode()


def test_metadata_names_the_artifact_by_its_hash(client, run_dir):
    meta = client.get("/metadata").json()
    art = Artifact.load(run_dir / "export")
    assert meta["version"] == art.digest
    assert meta["name"] == f"{run_dir.name}-export"
    assert {g["metric"] for g in meta["gates"]} == {g["metric"] for g in art.manifest["gates"]}
    assert meta["labels"] == json.loads((run_dir / "export" / "labels.json").read_text())
    assert meta["over_length"] == "reject" and meta["settings"]["max_texts"] == 4


def test_bentoml_endpoints(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text


# -------------------------------------------------------------------------------------------- bad input
CT = {"content-type": "application/json"}
BAD = [
    ("text/plain", {"content-type": "text/plain"}, json.dumps(VALID).encode(), 415),
    ("bentoml pickle", {"content-type": "application/vnd.bentoml+pickle"}, b"\x80\x04K\x01.", 415),
    ("form", {"content-type": "application/x-www-form-urlencoded"}, b"texts=a", 415),
    ("no content type", {}, json.dumps(VALID).encode(), 415),
    ("malformed JSON", CT, b'{"texts": ["a",', 400),
    ("not UTF-8", CT, b'{"texts": ["\xff\xfe"]}', 400),
    ("empty list", CT, b'{"texts": []}', 422),
    ("too many texts", CT, json.dumps({"texts": ["a"] * 5}).encode(), 422),
    ("non-string item", CT, b'{"texts": ["a", 1]}', 422),
    ("null item", CT, b'{"texts": [null]}', 422),
    ("texts not a list", CT, b'{"texts": "a"}', 422),
    ("missing texts", CT, b'{"text": ["a"]}', 422),
    ("extra key", CT, b'{"texts": ["a"], "debug": true}', 422),
    ("top-level list", CT, b'["a"]', 422),
    ("over the token limit", CT, json.dumps({"texts": ["word " * 200]}).encode(), 422),
    ("body over the size limit", CT, json.dumps({"texts": ["a" * 5000]}).encode(), 413),
]


@pytest.mark.parametrize("headers,body,status", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_refused_and_the_server_stays_healthy(endpoint, headers, body, status):
    _, client, route = endpoint
    assert_error(client.post(route, content=body, headers=headers), status)
    assert_healthy(client, route)


def test_chunked_body_over_the_size_limit_gets_413(endpoint):
    _, client, route = endpoint

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"x" * 1000

    assert_error(client.post(route, content=chunks(), headers=CT), 413)
    assert_healthy(client, route)


def test_bentoml_client_sees_the_same_errors(endpoint):
    server, client, route = endpoint
    with bentoml.SyncHTTPClient(server.url) as bc:
        call = getattr(bc, route.strip("/"))
        for texts in ([], ["a"] * 5, ["word " * 200]):
            with pytest.raises(bentoml.exceptions.BentoMLException) as err:
                call(texts=texts)
            assert err.value.error_code.value == 422 and "Traceback" not in str(err.value)
            assert_healthy(client, route)


def test_embed_matches_in_process_predictor(embed_server, embedding_run_dir):
    expected = Predictor.open(embedding_run_dir / "export").embed(VALID["texts"])
    with httpx.Client(base_url=embed_server.url, timeout=10) as c:
        got = c.post("/embed", json=VALID).json()
        assert c.get("/metadata").json()["task"] == "embedding"
        alone = [c.post("/embed", json={"texts": [text]}).json()[0] for text in VALID["texts"]]
    assert np.allclose(np.asarray(got), expected, atol=1e-5)
    assert np.allclose(np.asarray(alone), expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised inside the graph
    with bentoml.SyncHTTPClient(embed_server.url) as bc:
        assert np.allclose(np.asarray(bc.embed(texts=VALID["texts"])), expected, atol=1e-5)


def test_the_route_the_model_has_no_use_for_gets_404(endpoint):
    _, client, route = endpoint
    other = "/embed" if route == "/classify" else "/classify"
    for r in (client.post(other, json=VALID), client.post("/predict", json={"rows": [{}]}), client.get(other)):
        assert_error(r, 404)
        assert f"POST {route}" in r.json()["error"]
    assert_healthy(client, route)


def inference_routes(url: str) -> dict:
    """The POST operations of the server's OpenAPI document (BentoML's GET /docs.json), by path."""
    spec = httpx.get(url + "/docs.json", timeout=10).json()
    return {path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops}


def test_openapi_and_metadata_show_the_models_one_typed_route(endpoint):
    server, client, route = endpoint
    posts = inference_routes(server.url)
    assert list(posts) == [route]
    body = posts[route]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["texts"] and body["properties"]["texts"]["items"] == {"type": "string"}
    answer = posts[route]["responses"]["200"]["content"]["application/json"]["schema"]["items"]
    kinds = ("text", "labels") if route == "/classify" else ("text", "vector")
    assert answer == ({"$ref": "#/components/schemas/Prediction"} if route == "/classify"
                      else {"type": "array", "items": {"type": "number"}})
    meta = client.get("/metadata").json()
    assert (meta["route"], meta["inputs_kind"], meta["answers_kind"]) == (route, *kinds)


@pytest.mark.serial  # a 3 s stall against a 2 s timeout, a 0.8 s sleep against the upload threads
def test_stalled_uploads_hold_no_slot_and_time_out_504(server, client):
    """Two uploads that stall mid-body take no concurrency slot (a slot is taken only once a body is
    complete): a third request meanwhile is answered, the stalled ones end 504 at the 2 s timeout, and
    the server is healthy afterwards. (429 for complete requests: tests/test_hardening_server.py.)"""
    results: dict[int, httpx.Response] = {}

    def stalled(k: int) -> None:
        def body():
            yield b'{"texts": ['
            time.sleep(3.0)
            yield b'"late"]}'

        results[k] = httpx.post(server.url + "/classify", content=body(), headers=CT, timeout=15)

    threads = [threading.Thread(target=stalled, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.8)
    assert client.post("/classify", json=VALID).status_code == 200
    assert client.get("/livez").status_code == 200
    for t in threads:
        t.join()
    for r in results.values():
        assert_error(r, 504)
    assert_healthy(client)


def connection_closes(client: httpx.Client, requests: int = 8, gap_s: float = 0.1) -> list[bool]:
    """Per request on one keep-alive client: whether the server closed the connection after it."""
    closes = []
    for _ in range(requests):
        r = client.post("/classify", json=VALID)
        assert r.status_code == 200, r.text
        closes.append(r.headers.get("connection") == "close")
        time.sleep(gap_s)
    return closes


def test_old_keep_alive_connections_are_closed_only_with_several_workers(client, run_dir, tmp_path):
    """With two workers, a connection older than max_connection_age_s (0.3 s) is closed after its next
    response and the client reconnects (to the less busy worker); one worker keeps it open."""
    assert not any(connection_closes(client))
    settings = serving.ServingSettings(**LIMITS | {"workers": 2, "max_concurrency": 4})
    cfg = serving.write_config(serving.resolve(run_dir), settings, tmp_path / "serving.json")
    with serving.Server(cfg, log=tmp_path / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        closes = connection_closes(c)
        assert any(closes) and not all(closes), closes


# ----------------------------------------------------------------------- settings, sources, CLI, build
def test_a_worker_refuses_a_model_its_endpoint_was_not_built_for(run_dir, tmp_path):
    """The endpoint is built at import from the serving config; a worker whose model declares another route or
    kinds (the config edited, or the model swapped after it was written) refuses it before serving anything."""
    cfg = serving.write_config(serving.resolve(run_dir), serving.ServingSettings(**LIMITS), tmp_path / "serving.json")
    written = json.loads(cfg.read_text())
    written["model"]["endpoint"] |= {"route": "/embed", "answers_kind": "vector"}
    cfg.write_text(json.dumps(written))
    with pytest.raises(LifecycleError, match="not the one the serving config was written for"):
        serving.Server(cfg, log=tmp_path / "server.log", startup_timeout_s=60).start()


def test_source_resolution(run_dir, tmp_path):
    assert serving.resolve(run_dir).path == run_dir / "export"
    assert serving.resolve(run_dir / "export").version == Artifact.load(run_dir / "export").digest
    with pytest.raises(LifecycleError, match="onnx-model"):
        serving.resolve(run_dir / "finetune")
    with pytest.raises(LifecycleError, match="nothing to serve"):
        serving.resolve(tmp_path)


def test_tuned_settings_are_read_from_beside_the_artifact(run_dir):
    served = serving.resolve(run_dir)
    assert serving.load_settings(served) == serving.ServingSettings()
    served.tuned_path.write_text(json.dumps({"settings": {"workers": 2, "batching": True}}))
    try:
        assert serving.load_settings(served).workers == 2
        served.tuned_path.write_text(json.dumps({"settings": {"workers": 0}}))
        with pytest.raises(LifecycleError, match="unusable serving settings"):
            serving.load_settings(served)
    finally:
        served.tuned_path.unlink()


def test_pick_best_ignores_errors_and_weighs_light_load_latency():
    def m(rps, errors, p95, p50_one, tag, batching):
        return {"requests_per_s": rps, "error_count": errors, "ok": 10, "http_latency_p95_ms": p95,
                "one_client": {"http_latency_p50_ms": p50_one}, "settings": {"tag": tag, "batching": batching}}

    def best(*ms):
        return serving.pick_best(list(ms))["settings"]["tag"]

    fast_503 = m(900, 3, 5, 1, "sheds load", True)
    slow = m(300, 0, 10, 1, "slow", False)
    assert best(fast_503, m(500, 0, 30, 40, "batched", True), m(470, 0, 35, 4, "unbatched", False), slow) == "unbatched"
    # a near tie under load goes to the unbatched setting, whatever one client saw while tuning
    assert best(m(500, 0, 30, 2, "batched", True), m(490, 0, 32, 4, "unbatched", False)) == "unbatched"
    # batching that clearly cuts p95 under load (MiniLM) wins despite its light-load wait
    assert best(m(113, 0, 88, 35, "batched", True), m(114, 0, 118, 15, "unbatched", False)) == "batched"
    with pytest.raises(LifecycleError):
        serving.pick_best([fast_503])


def listening_addresses(port: int) -> list[tuple[str, int]]:
    """Local (address, port) of every TCP socket in LISTEN state on `port`, any process (psutil reads
    /proc/net/tcp and tcp6: no iproute2 needed)."""
    import psutil

    return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port == port})


def test_cli_serves_a_bundle_zip_on_loopback_and_stops_on_sigterm(run_dir, tmp_path):
    """`lifecycle serve BUNDLE`: the zip `lifecycle bundle` writes, served under its artifact's name and
    hash, default settings (over-long texts truncated), bound to 127.0.0.1 only, exit 0 on SIGTERM."""
    bundle = write_bundle(run_dir, tmp_path / "model.zip")
    assert serving.resolve(bundle).version == Artifact.load(run_dir / "export").digest
    assert serving.resolve(bundle).name == "tiny-export"
    proc = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = serving.server.listening_port(proc)  # port 0: bound by the kernel, no other process can take it first
        with bentoml.SyncHTTPClient(f"http://127.0.0.1:{port}", server_ready_timeout=90) as bc:
            long_text = "word " * 200
            got = bc.classify(texts=[long_text])
        expected = Predictor.open(bundle).predict([long_text])  # truncated to max_length, as in training
        assert got[0]["label"] == expected[0]["label"]
        assert listening_addresses(port) == [("127.0.0.1", port)]  # bound to loopback only
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "serving tiny-export " in out


def test_build_puts_the_model_in_the_store_versioned_by_its_hash(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    tag = subprocess.run([sys.executable, "-m", "lifecycle.cli", "build", str(run_dir)], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    digest = Artifact.load(run_dir / "export").digest
    out = subprocess.run([sys.executable, "-m", "bentoml", "get", tag, "-o", "json"], capture_output=True,
                         text=True, check=True).stdout
    models = [m["tag"] for svc in json.loads(out)["services"] for m in svc["models"]]
    assert models == [f"tiny-export:{digest[:32]}"]
    # and the Bento serves: its own copy of the model and settings (port 0: bound by the kernel, read back)
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != serving.CONFIG_ENV})
    try:
        port = serving.server.listening_port(proc)
        with bentoml.SyncHTTPClient(f"http://127.0.0.1:{port}", server_ready_timeout=90) as bc:
            assert len(bc.classify(texts=VALID["texts"])) == 2
            assert httpx.get(f"http://127.0.0.1:{port}/metadata").json()["version"] == digest
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_tune_measures_the_grid_and_writes_the_best_beside_the_artifact(run_dir, monkeypatch):
    """`serve --tune`'s measuring on real servers, at a two-setting grid and 1 s of load each (the real grid
    has six settings at 10 s); then the settings it wrote are the ones a later server starts with."""
    served = serving.resolve(run_dir)
    grid = [serving.ServingSettings(batching=True, max_latency_ms=1000), serving.ServingSettings(workers=2)]
    monkeypatch.setattr(serving.tuning, "tuning_grid", lambda: grid)  # where tune_settings looks it up
    try:
        best = serving.tune_settings(served, duration_s=1, echo=lambda *_: None)
        saved = json.loads(served.tuned_path.read_text())
        assert len(saved["measurements"]) == 2 and saved["settings"] == best.model_dump(mode="json")
        assert [m["settings"] for m in saved["measurements"]] == [g.model_dump(mode="json") for g in grid]
        assert saved["best"] == serving.pick_best(saved["measurements"])
        assert all(m["requests_per_s"] > 0 and m["ok"] > 0 for m in saved["measurements"])
        shares = [m["worker_cpu_shares"] for m in saved["measurements"]]  # per worker
        assert [len(x) for x in shares] == [1, 2] and all(sum(x) == pytest.approx(1.0) for x in shares)
        assert serving.load_settings(serving.resolve(run_dir)) == best
    finally:
        served.tuned_path.unlink(missing_ok=True)


@pytest.mark.slow
def test_load_at_4x_max_concurrency_for_60s_gives_only_429s(run_dir, tmp_path):
    settings = serving.ServingSettings(max_concurrency=8)
    cfg = serving.write_config(serving.resolve(run_dir), settings, tmp_path / "serving.json")
    with serving.Server(cfg, log=tmp_path / "server.log") as srv:
        request = [serving.json_request(srv.port, {"texts": [serving.SAMPLE_TEXT]})]
        result = serving.run_load(srv.port, request, clients=4 * settings.max_concurrency, duration_s=60)
        counts = result.summary()["status_counts"]
        print(f"60 s at {4 * settings.max_concurrency} clients: {counts}")
        assert set(counts) <= {"200", "429"}, counts
        assert counts.get("200", 0) > 0
        with httpx.Client(base_url=srv.url) as c:
            assert_healthy(c)


def test_a_server_with_no_port_named_serves_on_the_port_the_kernel_bound_for_it(run_dir, tmp_path):
    """No free-port race: a port found free and then passed to the server can be taken by another process in
    between; port 0 is bound by the kernel for the server itself."""
    import socket

    with start_server(run_dir, tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert srv.proc.args[srv.proc.args.index("--port") + 1] == "0"
        assert srv.port == serving.server.listening_port(srv.proc)
        assert c.get("/readyz").status_code == 200
    with pytest.raises(LifecycleError, match="exited|not ready"):  # a port the caller named and another holds
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        try:
            cfg = serving.write_config(serving.resolve(run_dir), serving.ServingSettings(**LIMITS), tmp_path / "s2.json")
            serving.Server(cfg, port=busy.getsockname()[1], log=tmp_path / "s2.log", startup_timeout_s=60).start()
        finally:
            busy.close()
