"""POST /classify_audio: a WAV or FLAC body (what `curl --data-binary @a.wav -H 'Content-Type: audio/wav'`
sends), a multipart upload of audio files or {"audio": [base64, ...]}, each clip checked from its header
before the request takes a concurrency slot and decoded once it holds one. The bad-input matrix (not
audio, a cut WAV, a FLAC bomb, too long, too many channels, refused rates, too many bytes, clips or
seconds, bad base64, the wrong key) runs twice: through the real RequestLimits middleware in front of a
stand-in for BentoML's app (no model, no server), and against a tiny audio classifier served by a real
`bentoml serve`, whose answers must equal the in-process Predictor's. Audio is generated here (tones,
noise, chirps), so nothing needs the shared data."""

from __future__ import annotations

import base64
import importlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import soundfile

from lifecycle import config, pipeline, serving
from lifecycle.bundle import write_bundle
from lifecycle.edge import Predictor
from lifecycle.edge.requests import audio_items, image_items

RATE = 8000
# max_body_bytes fits 5 s of 16-bit 8 kHz WAV (80 kB) and a 10-minute FLAC bomb (~90 kB), not 6 s of float WAV
SETTINGS = {"max_texts": 3, "max_concurrency": 2, "timeout_s": 10.0, "max_body_bytes": 160_000,
            "max_audio_seconds": 5.0, "max_request_seconds": 8.0}
AUDIO = {"route": "/classify_audio", "task": "audio-classification", "inputs_kind": "audio", "answers_kind": "labels",
         "request_key": "audio", "method": "answer"}


# ------------------------------------------------------------------------------------------ clips
def tone(freq: float = 440.0, seconds: float = 0.5, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def noise(seconds: float = 0.5, rate: int = RATE, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def chirp(seconds: float = 0.5, rate: int = RATE, low: float = 200.0, high: float = 3000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * (low * t + (high - low) * t * t / (2 * seconds)))).astype(np.float32)


def encoded(wave: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


WAV = encoded(tone())
FLAC = encoded(chirp(rate=16000), 16000, "FLAC")
FLAC_BOMB = encoded(np.zeros(600 * 48000, np.float32), 48000, "FLAC")  # 10 minutes of digital silence, ~90 kB
MEDIA = "audio/wav, audio/x-wav, audio/wave, audio/flac, audio/x-flac, multipart/form-data or application/json"


def body(data: bytes, media: str = "audio/wav") -> dict:
    return {"content": data, "headers": {"content-type": media}}


def clips_json(*clips) -> dict:
    return {"json": {"audio": [c if isinstance(c, str) else b64(c) for c in clips]}}


def files(*clips, names=None) -> dict:
    return {"files": [("file", (name, data, "audio/wav")) for name, data in zip(names or [f"{i}.wav" for i in
                                                                                         range(len(clips))], clips)]}


# (id, the request as httpx keyword arguments, its status, what its {"error": ...} says)
BAD = [
    ("not audio", body(b"RIFF but then just some text, not a WAV file at all"), 415, "the clip: not a WAV or FLAC file"),
    ("ogg vorbis", body(encoded(tone(), fmt="OGG", subtype="VORBIS")), 415,
     "the clip: OGG audio is not accepted (send WAV or FLAC)"),
    ("truncated wav", body(WAV[: len(WAV) // 2]), 422,
     f"the clip: truncated WAV: the data chunk is {len(WAV) - len(WAV) // 2} bytes shorter than its header says"),
    ("truncated flac", body(FLAC[: len(FLAC) // 2], "audio/flac"), 422,
     "the clip: FLAC audio could not be decoded (truncated or corrupt"),
    ("flac bomb", body(FLAC_BOMB, "audio/flac"), 413,
     "the clip: 600.0 s of audio (28800000 frames at 48000 Hz); the limit is 5 s"),
    ("too long", body(encoded(tone(seconds=6.0), subtype="PCM_U8")), 413,
     "the clip: 6.0 s of audio (48000 frames at 8000 Hz); the limit is 5 s"),
    ("3 channels", body(encoded(tone(channels=3))), 415, "the clip: 3 channels; the limit is 2 (mono or stereo)"),
    ("4000 Hz", body(encoded(tone(rate=4000), 4000)), 415,
     "the clip: sample rate 4000 Hz is refused; send 8000 to 48000 Hz"),
    ("96000 Hz", body(encoded(tone(seconds=0.1, rate=96000), 96000)), 415,
     "the clip: sample rate 96000 Hz is refused; send 8000 to 48000 Hz"),
    ("over max_body_bytes", body(encoded(tone(seconds=6.0), subtype="FLOAT")), 413, "body over 160000 bytes"),
    ("too many clips", clips_json(WAV, WAV, WAV, WAV), 422, '"audio" has 4 items; the limit is 3 per request'),
    ("too many files", files(WAV, WAV, WAV, WAV), 422, "multipart body has more than 3 files; the limit is 3"),
    ("too many seconds", files(*[encoded(tone(seconds=3.0))] * 3), 413,
     "the clips hold 9.0 s of audio (summed); the limit is 8 s per request (max_request_seconds)"),
    ("bad base64", clips_json(WAV, "@@ not base64 @@"), 422, '"audio"[1] is not valid base64'),
    ("wrong key", {"json": {"images": [b64(WAV)]}}, 422, 'expected a JSON object with exactly one key, "audio"'),
    ("not a list", {"json": {"audio": b64(WAV)}}, 422, '"audio" must be a non-empty list of base64 strings'),
    ("bad json", body(b'{"audio": [', "application/json"), 400, "body is not valid JSON"),
    ("text in json", clips_json(WAV, b"hello"), 415, '"audio"[1]: not a WAV or FLAC file'),
    ("truncated part", files(WAV, WAV[:600], names=["a.wav", "cut.wav"]), 422,
     'part "file" (cut.wav): truncated WAV: the data chunk is'),
    ("field not a file", {**files(WAV), "data": {"speaker": "jackson"}}, 422,
     'multipart field "speaker" is not a file; send each clip as a file part'),
    ("mp3 content type", body(WAV, "audio/mpeg"), 415, f"content type must be {MEDIA} (got audio/mpeg)"),
]


# ------------------------------------------------------------------------- the JSON form's checks
def test_audio_items_are_a_list_of_base64_strings_decoded_here():
    assert audio_items({"audio": [b64(WAV), b64(FLAC)]}, 3) == (None, [WAV, FLAC])
    assert audio_items({"audio": []}, 3) == ('"audio" must be a non-empty list of base64 strings', [])
    assert audio_items({"audio": ["aGk="] * 4}, 3) == ('"audio" has 4 items; the limit is 3 per request', [])
    assert audio_items({"audio": ["aGk=", 5]}, 3) == ('"audio"[1] is a int, not a base64 string', [])
    assert audio_items({"audio": ["aGk=", "not base64!"]}, 3) == ('"audio"[1] is not valid base64', [])
    assert audio_items({"clips": ["aGk="]}, 3)[0] == (
        'expected a JSON object with exactly one key, "audio": a list of base64 WAV/FLAC files (or one file as the '
        "body, content type audio/wav or audio/flac)")
    # the images' form is the same check under its own key
    assert image_items({"audio": ["aGk="]}, 3)[0].startswith('expected a JSON object with exactly one key, "images"')


# -------------------------------------------------------- RequestLimits in front of a stand-in app
async def echo_app(scope, receive, send):
    """BentoML's part: the model's route answers the body it was handed (the checked request's JSON)."""
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": message.get("body", b"")})


@pytest.fixture
def limits(monkeypatch):
    monkeypatch.syspath_prepend(str(serving.SERVICE_DIR))  # a sibling of service.py, imported as BentoML does
    request_limits = importlib.import_module("request_limits")
    settings = serving.ServingSettings(**SETTINGS).resolved()
    return request_limits.RequestLimits(echo_app, settings, request_limits.Served(), AUDIO)


def post_all(app, requests: list[dict]) -> list[httpx.Response]:
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            return [await client.post("/classify_audio", **kwargs) for kwargs in requests]

    return anyio.run(main)


def test_every_body_reaches_the_model_as_base64_json(limits):
    stereo = encoded(tone(rate=44100, channels=2), 44100)
    wav, flac, x_wav, upload, listed = post_all(limits, [
        body(WAV), body(FLAC, "audio/flac"), body(stereo, "audio/x-wav"),
        files(WAV, FLAC, names=["a.wav", "b.flac"]), clips_json(WAV)])
    for r, clips in [(wav, [WAV]), (flac, [FLAC]), (x_wav, [stereo]), (upload, [WAV, FLAC]), (listed, [WAV])]:
        assert r.status_code == 200 and r.json() == {"audio": [b64(c) for c in clips]}, r.text


@pytest.mark.parametrize("request_, status, says", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_each_bad_request_gets_its_4xx_naming_the_part_and_limit(limits, request_, status, says):
    t0 = time.monotonic()
    r, after = post_all(limits, [request_, body(WAV)])
    assert r.status_code == status and says in r.json()["error"] and set(r.json()) == {"error"}, r.text
    assert time.monotonic() - t0 < 2  # the bomb's 28.8 M frames are never decoded
    assert after.status_code == 200


def test_clips_are_decoded_only_once_the_request_holds_a_slot(limits):
    """With the one slot held, a FLAC cut in half (its header whole: only decoding finds it) gets 429, so it
    was not decoded before admission; a cut WAV, whose header says so, is refused before admission (422).
    Once the slot is free the cut FLAC is decoded, and refused naming the clip."""
    settings = serving.ServingSettings(**{**SETTINGS, "max_concurrency": 1}).resolved()
    release = anyio.Event()

    async def held(scope, receive, send):
        await release.wait()
        await echo_app(scope, receive, send)

    app = type(limits)(held, settings, limits.served, AUDIO)
    cut_flac, cut_wav = body(FLAC[: len(FLAC) // 2], "audio/flac"), body(WAV[:600])

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            answers = {}

            async def holder():
                answers["holder"] = await client.post("/classify_audio", **body(WAV))

            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                while app.slots.value:
                    await anyio.sleep(0.001)
                answers["flac"] = await client.post("/classify_audio", **cut_flac)
                answers["wav"] = await client.post("/classify_audio", **cut_wav)
                release.set()
            answers["flac, admitted"] = await client.post("/classify_audio", **cut_flac)
            return answers

    answers = anyio.run(main)
    assert answers["holder"].status_code == 200
    assert answers["flac"].status_code == 429 and answers["flac"].json() == {"error": "Too many requests"}
    assert answers["wav"].status_code == 422 and "the clip: truncated WAV" in answers["wav"].json()["error"]
    admitted = answers["flac, admitted"]
    assert admitted.status_code == 422 and "the clip: FLAC audio could not be decoded" in admitted.json()["error"]


def test_settings_narrow_the_edge_runtimes_audio_limits(limits, monkeypatch):
    narrow = serving.ServingSettings(**SETTINGS, max_audio_channels=1, min_sample_rate=16000,
                                     max_sample_rate=16000).resolved()
    app = type(limits)(echo_app, narrow, limits.served, AUDIO)
    stereo, at_8k, at_16k = post_all(app, [body(encoded(tone(rate=16000, channels=2), 16000)), body(WAV), body(FLAC)])
    assert stereo.status_code == 415 and "the clip: 2 channels; the limit is 1" in stereo.json()["error"]
    assert at_8k.status_code == 415 and "sample rate 8000 Hz is refused; send 16000 to 16000 Hz" in at_8k.json()["error"]
    assert at_16k.status_code == 200
    # unset, the request budget is 4 clips of max_audio_seconds
    default = serving.ServingSettings(**{**SETTINGS, "max_request_seconds": None, "max_texts": 8}).resolved()
    r, = post_all(type(limits)(echo_app, default, limits.served, AUDIO), [files(*[encoded(np.zeros(4 * RATE, np.float32), fmt="FLAC")] * 6)])
    assert r.status_code == 413 and "the clips hold 24.0 s of audio (summed); the limit is 20 s" in r.json()["error"]
    with pytest.raises(ValueError, match="max_audio_seconds"):  # the edge runtime decodes at most 30 s
        serving.ServingSettings(max_audio_seconds=60)
    with pytest.raises(ValueError, match="min_sample_rate"):
        serving.ServingSettings(min_sample_rate=4000)
    assert json.loads(serving.ServingSettings().model_dump_json()).keys().isdisjoint(
        {"max_audio_seconds", "max_audio_channels", "min_sample_rate", "max_sample_rate", "max_request_seconds"})


def test_the_service_defines_classify_audio_typed_as_a_list_of_base64_strings(tmp_path):
    from test_service_endpoints import PROBE, model_dir

    schema = {"task": "audio-classification", "inputs_kind": "audio", "answers_kind": "labels", "method": "answer",
              "route": "/classify_audio", "request_key": "audio"}
    config = serving.write_config(serving.Served(model_dir(tmp_path / "m", schema), "m", "v1"),
                                  serving.ServingSettings(), tmp_path / "serving.json")
    out = subprocess.run([sys.executable, "-c", PROBE, str(serving.SERVICE_DIR), json.dumps({"audio": str(config)})],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    spec = json.loads(out.stdout.splitlines()[-1])["audio"]["openapi"]
    assert [path for path, ops in spec["paths"].items() if "post" in ops] == ["/classify_audio"]
    request = spec["paths"]["/classify_audio"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["audio"] and request["properties"]["audio"]["items"] == {"type": "string"}


# ------------------------------------------------------------------ a tiny audio classifier, served
@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> Path:
    """An audiofolder of generated tones, noise and chirps at 8 and 16 kHz: finetune (bert-tiny sizes, 2 steps,
    no gate: only the plumbing matters) -> export -> serve (the serve stage's HTTP answers against its own)."""
    tmp = tmp_path_factory.mktemp("audio")
    makers = {"tone": lambda i, rate: tone(300 + 60 * i, rate=rate), "noise": lambda i, rate: noise(rate=rate, seed=i),
              "chirp": lambda i, rate: chirp(rate=rate, high=1500 + 150 * i)}
    for label, make in makers.items():
        (tmp / "clips" / label).mkdir(parents=True)
        for i in range(10):
            rate = 16000 if i % 3 == 0 else RATE  # resampled to the model's 8 kHz as read
            (tmp / "clips" / label / f"{label}{i}.wav").write_bytes(encoded(make(i, rate), rate))
    raw = {"name": "sounds", "seed": 0,
           "data": {"clips": {"format": "audiofolder", "path": str(tmp / "clips"), "audio": {"sampling_rate": RATE},
                              "split": {"validation": 0.2, "test": 0.2}}},
           "task": {"type": "audio-classification", "data": "clips", "max_length": 32},
           "stages": [{"kind": "finetune", "model": {"preset": "bert-tiny"}, "train": {"max_steps": 2, "batch_size": 8},
                       "gates": [], "collapse_min": None},
                      {"kind": "export", "latency": {"runs": 2, "batch32": False}, "gates": []},
                      {"kind": "serve", "clients": 2, "warmup_requests": 2}]}
    outcomes = pipeline.run(config.build(raw), workdir=tmp / "runs", echo=lambda *_: None)
    assert [o.status for o in outcomes] == ["passed"] * 3
    return tmp / "runs" / "sounds"


@pytest.fixture(scope="module")
def audio_server(audio_run, tmp_path_factory):
    """The export's bundle (what a device gets), served by `bentoml serve` with the SETTINGS limits."""
    tmp = tmp_path_factory.mktemp("audio-server")
    bundle = write_bundle(audio_run / "export", tmp / "sounds.zip")
    cfg = serving.write_config(serving.resolve(bundle), serving.ServingSettings(**SETTINGS), tmp / "serving.json")
    with serving.Server(cfg, log=tmp / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield srv, client


def test_the_serve_stage_finds_the_http_answers_equal_to_its_own(audio_run):
    served = json.loads((audio_run / "serve" / "manifest.json").read_text())["metrics"]
    assert served["prediction_mismatches"] == 0, served


def same_answers(got: list, want: list) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)


def test_classify_audio_answers_as_the_in_process_predictor(audio_server, audio_run):
    _, client = audio_server
    stereo = encoded(tone(523.0, rate=44100, channels=2), 44100)
    clips = [WAV, FLAC, stereo, encoded(noise(seed=7)), encoded(chirp(), subtype="FLOAT")]
    want = Predictor.open(audio_run / "export").answer(clips)
    for clip, media, expected in zip(clips[:3], ["audio/wav", "audio/flac", "audio/x-wav"], want):
        r = client.post("/classify_audio", content=clip, headers={"content-type": media})
        assert r.status_code == 200, r.text
        same_answers(r.json(), [expected])
    upload = client.post("/classify_audio", **files(clips[3], clips[4], names=["a.wav", "b.wav"]))
    listed = client.post("/classify_audio", **clips_json(*clips[:2], clips[3]))  # 3 clips: max_texts
    assert upload.status_code == 200 and listed.status_code == 200, (upload.text, listed.text)
    same_answers(upload.json(), want[3:])
    same_answers(listed.json(), [*want[:2], want[3]])
    assert client.post("/classify", json={"texts": ["x"]}).status_code == 404  # an audio model answers /classify_audio


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_wav_file_posted_by_curl_is_classified(audio_server, audio_run, tmp_path):
    server, _ = audio_server
    (tmp_path / "a.wav").write_bytes(WAV)
    out = subprocess.run(["curl", "-sS", "--data-binary", "@a.wav", "-H", "Content-Type: audio/wav",
                          server.url + "/classify_audio"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    same_answers(json.loads(out.stdout), Predictor.open(audio_run / "export").answer([WAV]))


def test_the_bad_input_matrix_over_http_leaves_the_server_live(audio_server):
    server, client = audio_server
    failures = []
    for name, request_, status, says in BAD:
        r = client.post("/classify_audio", **request_)
        if r.status_code != status or set(r.json()) != {"error"} or says not in r.json()["error"]:
            failures.append(f"{name}: expected {status} saying {says!r}, got {r.status_code} {r.text[:300]}")
        if client.get("/livez").status_code != 200 or client.post("/classify_audio", **body(WAV)).status_code != 200:
            failures.append(f"{name}: the server is not live afterwards")
    assert not failures, "\n".join(failures)
    assert "Traceback" not in server.log.read_text(errors="replace")
