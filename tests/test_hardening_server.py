"""Issue 17, server and bundle cases: requests and bundles that once denied service, stalled the event
loop, answered 500 or left files behind. The server cases are data (tests/adversarial/server_cases.yaml),
walked against one real `bentoml serve` on 127.0.0.1; the slow-body and long-text attacks are measured
while normal traffic runs."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from test_serving import VALID, assert_healthy, inference_routes, run_dir  # noqa: F401  (run_dir: a session fixture)

from lifecycle import cli, serving
from lifecycle.artifact import Artifact, commit
from lifecycle.bundle import write_bundle
from lifecycle.edge import EXTRACT_PREFIX, BundleError, Predictor
from lifecycle.edge.extraction import _extract

CASES = yaml.safe_load((Path(__file__).parent / "adversarial" / "server_cases.yaml").read_text())
# Slow-body, long-text and concurrency-slot attacks race real time against a server timeout: alone on the
# cores (`make test` runs `serial` tests after the parallel phase).
pytestmark = pytest.mark.serial
VERDICT = {"passed": False, "reasons": ["quantize: gate accuracy failed"], "override": "served for a demo"}


@pytest.fixture(scope="module")
def hardened(run_dir, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("hardened-server")
    settings = serving.ServingSettings(**CASES["settings"])
    cfg = serving.write_config(serving.resolve(run_dir), settings, tmp / "serving.json")
    written = json.loads(cfg.read_text())  # as `lifecycle serve --override` records the verdict it serves under
    written["model"]["verdict"] = VERDICT
    cfg.write_text(json.dumps(written))
    with serving.Server(cfg, log=tmp / "server.log") as srv:
        yield srv


def case_body(spec: dict | None) -> bytes:
    if spec is None:
        return b""
    if "json" in spec:
        return json.dumps(spec["json"]).encode()
    return (spec.get("prefix", "") + spec["repeat"] * spec["times"] + spec.get("suffix", "")).encode()


def send(port: int, case: dict, route: str = "/classify") -> tuple[int, bytes]:
    """One raw HTTP/1.1 request as the case describes it (lying Content-Length, partial or trickled
    body, headers trickled), then the answer. A server that answers early may close the connection while
    we still send. (0, b"") when the server closed the connection without an answer."""
    body = case_body(case.get("body"))
    sent = body[: case["send"]] if "send" in case else body
    head = (f"{case.get('method', 'POST')} {case.get('route', route)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {case.get('declare', len(body))}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            if "trickle_headers_s" in case:
                trickle(sock, head, case["trickle_headers_s"])
            elif "head_bytes" in case:  # part of the headers only, then wait
                sock.sendall(head[: case["head_bytes"]])
                select.select([sock], [], [], 60)
                sent = b""
            else:
                sock.sendall(head)
            if "trickle_s" in case:
                trickle(sock, sent, case["trickle_s"])
            else:
                sock.sendall(sent)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except http.client.RemoteDisconnected:
            return 0, b""
        return response.status, response.read()


def trickle(sock: socket.socket, data: bytes, seconds: float) -> int:
    """`data` a byte every `seconds`, until the server answers or closes the connection; returns the bytes sent."""
    for i in range(len(data)):
        if select.select([sock], [], [], seconds)[0]:
            return i  # answered
        sock.sendall(data[i : i + 1])
    return len(data)


def walk(server, cases: list[dict], route: str, valid: dict) -> None:
    """Every case gets its status and message (a timer's case not before its timer could fire), and the
    server answers /livez and a valid request after each one; the server's log holds no traceback. Failures
    are collected so that one run shows them all."""
    failures = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for case in cases:
            t0 = time.monotonic()
            try:
                status, body = send(server.port, case, route)
            except OSError as exc:
                failures.append(f"{case['id']}: no answer ({exc!r})")
                continue
            seconds = time.monotonic() - t0
            got = f"{status} after {seconds:.1f} s: {body[:200]!r}"
            # "not before its timer": 0.9 of it, since the server's timers (libuv under uvicorn) count from
            # the loop's time cached at the start of an iteration and may fire a little early, measured
            # from before the connection opened
            if status != case["status"] or seconds < (at_least := 0.9 * case.get("after_s", 0)):
                failures.append(f"{case['id']}: expected {case['status']} after at least {at_least:.2g} s, got {got}")
            elif status == 200:
                if len(json.loads(body)) != case["items"]:
                    failures.append(f"{case['id']}: expected {case['items']} results, got {got}")
            elif status and (set(json.loads(body)) != {"error"} or case["message"] not in json.loads(body)["error"]
                             or b"Traceback" in body):
                failures.append(f"{case['id']}: expected {{\"error\": ...{case['message']!r}...}}, got {got}")
            try:
                assert client.get("/livez").status_code == 200
                r = client.post(route, json=valid)
                assert r.status_code == 200, r.text
            except (AssertionError, httpx.HTTPError) as exc:
                failures.append(f"{case['id']}: unhealthy afterwards ({exc!r})")
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]  # every refusal is ours: nothing logged a stack trace
    assert not failures, "\n".join(failures)


def test_server_abuse_matrix(hardened):
    walk(hardened, CASES["cases"], "/classify", VALID)


def test_a_kept_alive_connection_trickling_its_next_headers_is_cut_off(hardened):
    """The header timeout counts from a request's first byte on a kept-alive connection too (each byte
    cancels uvicorn's keep-alive timer): the first request is answered, the trickled second one gets 408."""
    body = json.dumps(VALID).encode()
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=30) as sock:
        sock.sendall(head + body)
        first = http.client.HTTPResponse(sock)
        first.begin()
        assert first.status == 200 and len(json.loads(first.read())) == 2
        t0 = time.monotonic()
        sent = trickle(sock, head, 0.3)
        second = http.client.HTTPResponse(sock)
        second.begin()
        assert second.status == 408 and json.loads(second.read()) == {
            "error": f"request headers not complete after {CASES['settings']['header_timeout_s']:g} s"}
        # cut off mid-headers (counted), and not before the timer could fire: a lower bound, which load
        # cannot break (an upper one measured this machine's speed)
        assert sent < len(head) and time.monotonic() - t0 >= CASES["settings"]["header_timeout_s"], (sent, len(head))
        assert sock.recv(1) == b""  # closed


def test_metadata_shows_the_verdict_the_model_is_served_under(hardened):
    assert httpx.get(hardened.url + "/metadata", timeout=10).json()["verdict"] == VERDICT


# ----------------------------------------------------------------------------------------- slow bodies
def slow_body_attack(port: int, attackers: int, seconds: float, trickle_s: float = 0.2) -> dict:
    """`attackers` connections each sending a body a byte per trickle_s (reconnecting when cut off),
    while one client sends normal requests back to back; returns the normal requests' status counts."""
    request = serving.json_request(port, VALID)
    statuses: list[int] = []

    async def attacker(deadline: float) -> None:
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n")
            try:
                while time.monotonic() < deadline and not reader.at_eof():
                    writer.write(b" ")
                    await writer.drain()
                    try:  # answered (408/504) or closed: reconnect
                        if await asyncio.wait_for(reader.read(1), trickle_s):
                            break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                pass
            finally:
                writer.close()

    async def normal(deadline: float) -> None:
        await asyncio.sleep(0.5)  # the attackers connect first
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            writer.write(request)
            status, _, close = await serving.loadgen._read_response(reader)
            statuses.append(status)
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.02)
        writer.close()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(normal(deadline), *(attacker(deadline) for _ in range(attackers)))

    asyncio.run(main())
    counts: dict[int, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return counts


def test_slow_bodies_take_no_concurrency_slot(hardened):
    """12 uploads trickling in (3x the 4 slots) for 3 s (each cut off after the 1.5 s body timeout, then
    again): normal requests are still answered. Before the fix each upload held a slot from its first byte
    and every normal request got 429."""
    counts = slow_body_attack(hardened.port, attackers=12, seconds=3.0)
    ok = counts.get(200, 0)
    assert ok >= 0.9 * sum(counts.values()) and ok >= 5, counts
    with httpx.Client(base_url=hardened.url, timeout=10) as client:
        assert_healthy(client)


def admitted(client: httpx.Client) -> float:
    """Requests holding a max_concurrency slot, from the server's /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("lifecycle_requests_admitted "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no lifecycle_requests_admitted")


def test_complete_requests_beyond_max_concurrency_still_get_429(hardened):
    """The limit still holds once bodies are complete: 4 requests of 4 long texts each (one inference
    at a time, ~1 s of tokenising each) hold the 4 slots, so one more request meanwhile gets 429. The
    5th is sent once /metrics shows the 4 admitted: a fixed sleep raced the uploads (it failed in full
    suite runs, where the 5th found a slot free)."""
    payload = {"texts": ["word " * 50_000] * 4}
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        httpx.post(hardened.url + "/classify", json=payload, timeout=60).status_code)) for _ in range(4)]
    with httpx.Client(base_url=hardened.url, timeout=10) as client:
        assert admitted(client) == 0
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while (held := admitted(client)) < 4 and time.monotonic() < deadline and not results:
            time.sleep(0.01)
        r = client.post("/classify", json=VALID)
        for t in threads:
            t.join()
        assert results == [200] * 4
        assert r.status_code == 429 and r.json() == {"error": "Too many requests"}, (held, r.text)
        assert_healthy(client)


# ----------------------------------------------------------------------------------------- long texts
def livez_during(url: str, payload: dict) -> tuple[float, list[float], int]:
    """Send `payload` to /classify and poll /livez until it is answered: (request seconds, /livez
    latencies in seconds, request status)."""
    done: dict = {}

    def post() -> None:
        t0 = time.monotonic()
        done["status"] = httpx.post(url + "/classify", json=payload, timeout=60).status_code
        done["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=post)
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        client.get("/livez")  # connected before the request starts
        thread.start()
        while thread.is_alive():
            t0 = time.monotonic()
            assert client.get("/livez").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.01)
    thread.join()
    return done["seconds"], latencies, done["status"]


def test_one_long_text_does_not_stall_the_event_loop(hardened):
    """A 1 M-character text: tokenising it takes ~1 s, which used to run on the event loop (/livez
    waited 0.7-1.1 s); now it runs in the inference thread and /livez answers throughout."""
    seconds, latencies, status = livez_during(hardened.url, {"texts": ["word " * 200_000]})
    assert status == 200
    assert len(latencies) >= 3, (seconds, latencies)
    # Relative to the request's own time, so that a loaded machine slows both sides alike.
    assert max(latencies) < max(0.25, 0.3 * seconds), (seconds, sorted(latencies)[-5:])


def test_a_second_server_leaves_the_first_ones_metrics_alone(hardened, tmp_path):
    """Every `bentoml serve` empties the Prometheus directory under its BentoML home as it starts: with one
    home for both, starting a second server wiped the first one's gauges (its admitted count then read 0).
    Each server has a home of its own, removed when it stops."""
    prometheus = hardened.home / "prometheus_multiproc_dir"
    before = {p.name for p in prometheus.iterdir()}
    assert before, "the running server keeps its metrics in its own home"
    with serving.Server(hardened.config, log=tmp_path / "second.log") as second:
        home = second.home
        assert home != hardened.home and (home / "prometheus_multiproc_dir").is_dir()
        assert before <= {p.name for p in prometheus.iterdir()}
        assert httpx.get(hardened.url + "/metrics", timeout=10).status_code == 200
    assert second.home is None and not home.exists()


# ------------------------------------------------------------------------------------ other models
def served_model(kind: str, tmp: Path) -> Path:
    """What each of server_cases.yaml's `models` is served from, as small as it can be built."""
    if kind == "generator":  # a gpt-tiny decoder, untrained, exported with its KV cache: no training run
        from test_generation import exported

        exported("gpt-tiny", tmp)
        return tmp / "onnx"
    from test_tabular import PENGUINS

    from lifecycle import config, pipeline

    raw = json.loads(json.dumps(PENGUINS))  # one epoch and no gate: only the route's plumbing matters
    raw["stages"][0]["train"]["epochs"] = 1
    raw["stages"][0]["gates"] = []
    if kind == "image":  # the same on scikit-learn's 8x8 digits
        raw["name"], raw["data"] = "digits", {"digits": {"format": "sklearn-digits"}}
        raw["task"] = {"type": "image-classification", "data": "digits"}
        raw["stages"][0]["model"]["overrides"] = {"patch_size": 2}
    pipeline.run(config.build(raw), workdir=tmp, echo=lambda *_: None)
    return tmp / raw["name"]


@pytest.mark.parametrize("model", CASES["models"], ids=[m["model"] for m in CASES["models"]])
def test_server_abuse_matrix_of_other_models(model, tmp_path):
    settings = serving.ServingSettings(**CASES["settings"])
    cfg = serving.write_config(serving.resolve(served_model(model["model"], tmp_path)), settings,
                               tmp_path / "serving.json")
    with serving.Server(cfg, log=tmp_path / "server.log") as server:
        walk(server, model["cases"], model["route"], model["valid"])
        # one inference route, the model's (a generator's stream too); another kind's is 404 naming it
        stream = ["/generate_stream"] if model["route"] == "/generate" else []
        assert sorted(inference_routes(server.url)) == sorted([model["route"], *stream])
        other = httpx.post(server.url + "/classify", json={"texts": ["a"]}, timeout=10)
        assert other.status_code == 404 and f"POST {model['route']}" in other.json()["error"]


# ------------------------------------------------------------------------------------------ image decoding
def black_png(side: int = 4096) -> bytes:
    """side x side black pixels in a few kB: decoding one 4096 x 4096 costs ~60 ms of CPU."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def upload(url: str, images: list[bytes]) -> httpx.Response:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return httpx.post(url + "/classify_image", files=files, timeout=60)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """A digits classifier (1 epoch) with one concurrency slot and a budget of 8 images of 4096 x 4096."""
    tmp = tmp_path_factory.mktemp("image-server")
    settings = serving.ServingSettings(max_concurrency=1, max_texts=64, max_body_bytes=2 << 20,
                                       max_request_pixels=8 * 4096 * 4096)
    cfg = serving.write_config(serving.resolve(served_model("image", tmp)), settings, tmp / "serving.json")
    with serving.Server(cfg, log=tmp / "server.log") as srv:
        yield srv


def test_images_over_the_request_pixel_budget_are_refused_from_their_headers(image_server):
    """63 black 4096 x 4096 PNGs in one ~1 MB upload: each image is within max_image_pixels, but decoding
    them all cost 3.7 s of CPU before any concurrency slot was taken. Now their headers are summed against
    max_request_pixels: a fast 413 naming the budget, at the cost of reading 63 headers."""
    def server_cpu(images: list[bytes]) -> tuple[httpx.Response, float]:
        before = sum(image_server.cpu_seconds().values())
        r = upload(image_server.url, images)
        return r, sum(image_server.cpu_seconds().values()) - before

    # the baseline, on this machine now: 8 of them, the budget, decoded and answered
    within, decoded_8 = server_cpu([black_png()] * 8)
    assert within.status_code == 200, within.text
    r, refused_63 = server_cpu([black_png()] * 63)
    assert r.status_code == 413, r.text
    assert r.json() == {"error": f"the images hold {63 * 4096 * 4096} pixels (width x height, summed); the limit "
                                 f"is {8 * 4096 * 4096} per request (max_request_pixels): send fewer or smaller "
                                 "images per request"}
    # relative, not a wall-clock bound: decoding the 63 would cost ~8x the baseline (it was 3.7 s of CPU)
    assert refused_63 < 0.5 * decoded_8, (refused_63, decoded_8)
    assert upload(image_server.url, [black_png(8)]).status_code == 200


def test_images_are_decoded_only_once_the_request_holds_a_slot(image_server):
    """With the one slot held by a request decoding 8 large images, a request whose image is truncated gets
    429: nothing of it was decoded before admission (it used to be decoded first, and answered 422)."""
    good = black_png()
    broken = good[: len(good) // 2]  # a whole header, half the pixel data
    results = []
    holder = threading.Thread(target=lambda: results.append(upload(image_server.url, [good] * 8).status_code))
    with httpx.Client(base_url=image_server.url, timeout=10) as client:
        holder.start()
        deadline = time.monotonic() + 30
        while admitted(client) < 1 and time.monotonic() < deadline and not results:
            time.sleep(0.005)
        r = upload(image_server.url, [broken])
        holder.join()
        assert results == [200]
        assert r.status_code == 429 and r.json() == {"error": "Too many requests"}, r.text
        r = upload(image_server.url, [broken])  # the slot free: decoded, and refused naming the part
        assert r.status_code == 422 and 'part "file" (0.png): PNG image could not be decoded' in r.json()["error"]


# ------------------------------------------------------------------------------- `lifecycle serve` CLI
def tampered(bundle: Path, out: Path) -> Path:
    """The bundle with one byte of model.onnx changed, its manifest left as it was."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    return out


def run_cli(args: list[str], env: dict, timeout_s: float) -> tuple[int | None, str, str]:
    """`python -m lifecycle.cli ARGS` in a session of its own, killed (with its children) after timeout_s:
    (exit status or None when it had to be killed, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def test_serve_refuses_a_tampered_bundle_before_starting(run_dir, tmp_path):  # noqa: F811
    bad = tampered(write_bundle(run_dir, tmp_path / "good.zip"), tmp_path / "model.zip")
    code, out, err = run_cli(["serve", str(bad), "--port", "0"], dict(os.environ), 60)  # refused before binding
    lines = err.strip().splitlines()
    assert code == 1, (code, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(bad) in lines[0] and "model.onnx" in lines[0] and "sha256" in lines[0], err
    assert "serving" not in out


def test_serve_removes_the_extracted_bundle_when_it_stops(run_dir, tmp_path):  # noqa: F811
    bundle = write_bundle(run_dir, tmp_path / "model.zip")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, TMPDIR=str(tmp)))
    try:
        port = serving.server.listening_port(proc)  # port 0: bound by the kernel, no other process can take it first
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.post(f"http://127.0.0.1:{port}/classify", json=VALID, timeout=10).status_code == 200
        assert len(list(tmp.glob(EXTRACT_PREFIX + "*"))) == 1  # extracted once, for every worker
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out[-3000:]
    assert list(tmp.glob("lifecycle-*")) == [], out[-3000:]


def test_bundle_cli_error_is_one_line(run_dir, tmp_path, capsys):  # noqa: F811
    """An artifact whose recorded predictions its model does not reproduce: `lifecycle bundle` exits 1
    with one line naming it (it printed a BundleError traceback)."""
    src = run_dir / "export"
    work = tmp_path / "export.tmp"
    shutil.copytree(src, work)
    (work / "manifest.json").unlink()
    manifest = json.loads((src / "manifest.json").read_text())
    for sample in manifest["details"]["sample_predictions"]:
        sample["answer"]["score"] = 1.5  # no softmax gives this
    art = commit(work, tmp_path / "export", {k: v for k, v in manifest.items() if k != "files"})
    assert Artifact.load(art.path).kind == "onnx-model"
    assert cli.main(["bundle", str(art.path), "-o", str(tmp_path / "m.zip")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {art.path}: prediction differs"), err
    assert not (tmp_path / "m.zip").exists()


# ---------------------------------------------------------------------------------------- zip extraction
def zip_of(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def tmpdir_of_extractions(tmp_path, monkeypatch):
    """tempfile's directory, private to the test: what an extraction left behind is visible."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path, tmpdir_of_extractions):
    bomb = zip_of(tmp_path / "bomb.zip", {"manifest.json": b"{}", "model.onnx": bytes(64 << 20)})
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match=r"model.onnx' expands \d+x"):
        Predictor.open(bomb)
    assert list(tmpdir_of_extractions.iterdir()) == []  # refused from the zip's directory: no directory made


def test_zip_member_and_total_sizes_are_capped(tmp_path, tmpdir_of_extractions):
    members = {"a.bin": os.urandom(600_000), "b.bin": os.urandom(600_000)}  # incompressible
    z = zip_of(tmp_path / "big.zip", members)
    with pytest.raises(BundleError, match="'a.bin' expands to 600000 bytes; the limit is 500000"):
        _extract(z, max_member_bytes=500_000)
    with pytest.raises(BundleError, match="expand to 1200000 bytes; the limit is 1000000"):
        _extract(z, max_total_bytes=1_000_000)
    out = _extract(z)
    assert sorted(p.name for p in out.iterdir()) == ["a.bin", "b.bin"]
    shutil.rmtree(out)


def test_zip_whose_header_understates_a_member_is_refused(tmp_path, tmpdir_of_extractions):
    """Sizes declared in the zip's headers are only claims: a member that holds more than its header
    says is refused as a BundleError (not a zipfile traceback) and leaves nothing behind."""
    z = zip_of(tmp_path / "liar.zip", {"model.onnx": os.urandom(2 << 20)})
    data = bytearray(z.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    data[local + 22 : local + 26] = (1000).to_bytes(4, "little")  # uncompressed size, local header
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")  # and in the central directory
    z.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="liar.zip: not a readable bundle zip"):
        _extract(z)
    assert list(tmpdir_of_extractions.iterdir()) == []
