"""The BentoML service: answers with an export/quantize artifact or an edge bundle, through
`lifecycle.edge` (the one inference path shared with the bundle and the `serve` stage), on the route
the model's task declares. BentoML imports this module by its path in every worker, so its siblings are
top-level modules: request_limits (RequestLimits, the ASGI middleware that checks every request before it
takes a concurrency slot), file_bodies (its checks of image and audio files: headers first, decoding once
admitted) and http_guards (error bodies, the JSON parser, the header timeout); the checks of a request's
payload are lifecycle.edge.requests. `lifecycle build` packs the four into a Bento.

    lifecycle serve runs/tiny            # writes the serving config below and runs `bentoml serve`
    curl -s 127.0.0.1:3000/classify -H 'content-type: application/json' -d '{"texts": ["some text"]}'

Everything comes from one JSON file named by $LIFECYCLE_SERVING_CONFIG (or `serving.json` beside this
file, as inside a Bento), written by `lifecycle.serving`: the model (a path, or a BentoML model-store
tag), its name, version (the artifact hash), gate results and the verdict it is served under, and the
settings (workers, onnxruntime threads, batching, limits). The decorators below read it at import time,
in every worker.

One inference endpoint, the served model's: its route, the key of its request's list and the type of its
items (inputs kind) and of its answers (answers kind) come from the serving config (lifecycle.serving wrote
them from the model's schema.json), and the endpoint is built from two tables below (INPUT_TYPES,
ANSWER_TYPES), so BentoML's OpenAPI schema (GET /docs.json) and input validation show that one route, typed.
The routes of the shipped tasks: POST /classify {"texts": [...]} -> [{"label", "score", "scores"}, ...] (one
per text, same order) for a classifier; POST /embed {"texts": [...]} -> [[float, ...], ...] (pooled,
normalised as in the graph) for an embedding model; POST /predict {"rows": [{column: value, ...}, ...]} ->
the same answers as /classify for a table classifier (null: a missing value; the preprocessing inside the
model directory turns raw rows into the graph's inputs), POST /regress {"rows": [...]} -> [{"value": float},
...] for a table regressor, POST /score {"rows": [...]} -> [{"anomaly_score": float}, ...] for a table
anomaly scorer, POST /classify_image (a body of image/png or image/jpeg: one image; multipart/form-data:
one file part per image; or application/json {"images": [base64, ...]}: a batch) -> the same answers as
/classify for an image classifier (converted to the model's mode, transparency composited over black,
resized and normalised by the model's own image-processor config), with the same batching and the same
refusals; POST /embed_image (the same bodies, checks and refusals) -> [[float, ...], ...] for an image
embedder; POST /classify_audio (a body of audio/wav, audio/x-wav, audio/wave, audio/flac or audio/x-flac: one
clip; multipart/form-data: one file part per clip; or application/json {"audio": [base64, ...]}) -> the same
answers as /classify for a spoken-word classifier (WAV or FLAC, downmixed to mono, resampled to the model's
rate, log-mel features by the model's own feature-extractor config), with the same refusals. A plug-in workload's model is served the same way on its own route: {request_key: [JSON value,
...]} -> [JSON value, ...] for kinds the tables do not hold. A generator (answers kind "tokens") has its own
endpoint instead, with its options: POST /generate {"prompts": [...], optional
"max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "time_budget_s", "stream"} -> [{"text", "tokens", "finish_reason"}, ...]
for a generator (greedy at temperature 0; max_new_tokens capped at the settings' max_new_tokens; a request
stops cleanly after generate_time_budget_s with finish_reason "time"; a prompt with no room left in the
model's context is refused with 413 naming the limit; never adaptively batched; with "stream": true or an
Accept: text/event-stream header, server-sent events as tokens come: see generate_stream). Any other route answers
404 with a JSON error naming the model's own. GET /metadata (name, version = artifact hash, gate results,
"verdict": the run's verdict the model is served under ({"passed", "reasons", "override"}; null when the source
has none), its route, task, inputs and answers kinds, labels, settings); BentoML's
/livez, /readyz, /metrics, with lifecycle_requests_admitted (requests holding a max_concurrency slot, summed
over the workers: BentoML's request_in_progress also counts uploads still arriving). Every refusal has a JSON
body {"error": "..."} and never a stack trace in the answer or the log (BentoML's and Starlette's own answers,
a 404 for an unknown path or a 405 for a wrong method, are rewritten to the same body: http_guards.json_errors):

    415  content type other than application/json (BentoML's pickle type included: never unpickled)
    400  body that is not JSON (or not UTF-8), read by the parser BentoML reads it with (http_guards.parse_json): so
         also a lone UTF-16 surrogate ("\ud800"), nesting over 200 levels, an integer over 4300 digits
    422  not {"texts": [...]} ({"rows": [...]} for a table model), an empty list, more than max_texts
         items, an item that is not a string (a row: not an object, a required column absent, a value of
         the wrong type or a number no float holds; each message names the column; extra columns are
         ignored and counted in GET /metadata's "input_counts"); and,
         with over_length "reject", a text over the model's max_length tokens (the default, "truncate",
         cuts it to max_length tokens, as in training and in the edge bundle)
    413  an image of more than max_image_pixels (width x height, read from its header before any pixel is
         decoded: a decompression bomb costs nothing), or images of more than max_request_pixels summed
         (from their headers too); the images are decoded only once the request holds a concurrency slot
    415  an image body of another content type; an image (or "images"[i], or a multipart file part) that is
         not an allowed format (image_formats; a text file, a GIF) or of a mode that cannot be converted
    413  a clip longer than max_audio_seconds, or clips of more than max_request_seconds summed (from their
         headers too: 10 minutes of FLAC silence, ~90 kB, cost nothing); decoded once the request holds a slot
    415  an audio body of another content type; a clip that is not WAV or FLAC, has more than
         max_audio_channels channels, or a sample rate outside min_sample_rate..max_sample_rate (8000 to
         48000 Hz by default; a rate taken is resampled to the model's)
    422  an image or clip that is recognised but cannot be decoded (truncated, corrupt; a WAV whose data
         chunk is shorter than its header says, from the header), an "images" or "audio" item that is
         not base64, a multipart field that is not a file or more than max_texts files; each message
         names the item ("images"[2]: ..., the clip: ..., part "file" (a.wav): ...)
    400  a multipart body that cannot be parsed (no boundary, truncated)
    413  body over max_body_bytes (Content-Length, or counted while reading a chunked body)
    408  a body still incomplete after body_timeout_s (the connection is then closed); request headers
         incomplete after header_timeout_s (5 s by default; http_guards: uvicorn has no such limit)
    429  more than max_concurrency requests in flight (split evenly across workers), counted only from
         when a complete, well-formed body has arrived: uploads that trickle in hold no slot
    504  a request still unanswered after timeout_s, counted from its first byte (BentoML)
    503  only with batching on, when BentoML's dispatcher predicts max_latency_ms cannot be met: the
         default (batching off) never answers it, and tuning discards settings that do

Cost per request (2 cores, a 2-layer int8 model): the server's CPU per request is a multiple of the
model's inference (benchmarks/serving.py records both: `per_request`), more with BentoML's defaults than
here: no tracing spans unless asked for, one-text requests inferred on the
event loop (Classifier.infer), the response content type stated, an unbatched answer serialised once into
its Response (answers_api). With several workers, keep-alive
connections are closed after max_connection_age_s so that clients spread over the workers
(RequestLimits.closing).
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
from bentoml.validators import ContentType
from http_guards import install_header_timeout
from pydantic import BaseModel, TypeAdapter
from request_limits import INLINE_MAX_CHARS, STREAM_ROUTE, RequestLimits, Served
from starlette.responses import Response

from lifecycle.edge import BUNDLE_REFUSED, BundleError, Predictor

CONFIG_ENV = "LIFECYCLE_SERVING_CONFIG"


def _load_config() -> dict:
    path = Path(os.environ.get(CONFIG_ENV) or Path(__file__).with_name("serving.json"))
    if not path.is_file():
        raise RuntimeError(f"no serving config at {path}: start the service with `lifecycle serve SOURCE`, "
                           f"or set {CONFIG_ENV} to a file written by lifecycle.serving")
    return json.loads(path.read_text())


CONFIG = _load_config()
MODEL, SETTINGS = CONFIG["model"], CONFIG["settings"]
# The model's endpoint (lifecycle.serving.source.endpoint): route, task, inputs_kind, answers_kind, request_key, method
ENDPOINT = MODEL["endpoint"]


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class Regression(BaseModel):
    value: float


class AnomalyScore(BaseModel):
    anomaly_score: float


class Generated(BaseModel):
    text: str
    tokens: list[int]
    finish_reason: str  # eos | stop | length | time


def _decoded(files: list[str]) -> list[bytes]:
    # base64 images or clips already decoded once and checked by file_bodies.check_files
    return [base64.b64decode(f) for f in files]


# inputs kind -> (the type of one item of the request's list, what turns the checked items into the edge
# method's inputs). Another kind's items (a plug-in workload's) are JSON values, given to the model as they are.
INPUT_TYPES = {"text": (str, None), "rows": (dict, None), "images": (str, _decoded), "audio": (str, _decoded)}
# answers kind -> the type of one answer. Another kind's answers (a plug-in's) are served as JSON values.
ANSWER_TYPES = {"labels": Prediction, "vector": list[float], "value": Regression, "score": AnomalyScore}
DEFAULT_MAX_NEW_TOKENS, DEFAULT_TIME_BUDGET_S = 64, 10.0


def _metadata_app(served: Served):
    """GET /metadata: what `served` serves. BentoML API routes are POST-only, so this is a mounted app."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def metadata(_request):
        predictor = served.predictor
        return JSONResponse({"name": MODEL["name"], "version": MODEL["version"], "source": MODEL.get("source"),
                             "gates": MODEL.get("gates", []), "task": predictor.task, "route": predictor.route,
                             "inputs_kind": ENDPOINT["inputs_kind"], "answers_kind": ENDPOINT["answers_kind"],
                             "labels": predictor.labels, "input_counts": served.input_counts,
                             "max_length": predictor.max_length, "over_length": SETTINGS["over_length"],
                             "verdict": MODEL.get("verdict"), "settings": SETTINGS})

    return Starlette(routes=[Route("/metadata", metadata, methods=["GET"])])


class Classifier:
    """The service's worker; its inference endpoint is added below, from the model's answers kind (OWN_ENDPOINTS)."""

    # This worker's model once __init__ has opened it, given to RequestLimits and GET /metadata below (both
    # are built before the model is opened).
    served = Served()

    if MODEL.get("tag"):  # inside a Bento: the model comes from BentoML's model store (and is packed with it)
        stored_model = bentoml.models.BentoModel(MODEL["tag"])

    def __init__(self) -> None:
        root = Path(self.stored_model.path) / "model" if MODEL.get("tag") else Path(MODEL["path"])
        keys = [k.encode() for k in MODEL["trusted_keys"]] if MODEL.get("trusted_keys") else None
        try:
            self.predictor = Predictor.open(root, threads=SETTINGS["ort_threads"], spinning=SETTINGS["ort_spinning"],
                                            spin_between_runs=SETTINGS["ort_spinning"],
                                            trusted_keys=keys)  # with keys: the signature is checked in every worker
            opened = {"route": self.predictor.route, "inputs_kind": self.predictor.inputs_kind,
                      "answers_kind": self.predictor.answers_kind}
            if any(ENDPOINT[k] != v for k, v in opened.items()):  # the endpoint was built for another model
                raise BundleError(f"{root}: a {self.predictor.task} model ({opened}), not the one the serving config "
                                  f"was written for ({ENDPOINT}); serve it again with `lifecycle serve`")
        except BundleError as e:
            print(BUNDLE_REFUSED, e, file=sys.stderr, flush=True)
            raise
        self.predictor.logits([self.predictor.sample_input()])  # first run allocates; keep it off the first request
        self.busy = anyio.CapacityLimiter(1)  # one inference at a time, on the event loop or in the thread
        self.served.predictor = self.predictor

    async def infer(self, fn, items: list):
        """One short text (or row, or small image) runs on the event loop: handing it to a thread (anyio,
        then the GIL hand-back) costs about as much CPU per request as the small model's inference. Its
        inference is bounded by max_length tokens, but its tokenisation by its length in characters only
        (see INLINE_MAX_CHARS).
        Long items, batches and items of no length go to the thread, so that health checks, refusals and
        the batching dispatcher are answered while the tokenizer and onnxruntime work."""
        first = items[0] if len(items) == 1 else None
        if isinstance(first, (str, dict)) and len(first) <= INLINE_MAX_CHARS and self.busy.borrowed_tokens == 0:
            return fn(items)
        return await anyio.to_thread.run_sync(fn, items, limiter=self.busy)


def answers_api(endpoint: dict):
    """The model's endpoint: POST {route} {request_key: [item, ...]} -> [answer, ...], typed by the inputs and
    answers tables. BentoML builds its input model, validation and OpenAPI schema from the function's
    signature (inspect.signature, which honours __signature__: the request key is the parameter's name)
    and calls it with the list by that name, or positionally with a batch when batching is on."""
    key = endpoint["request_key"]
    item, to_edge = INPUT_TYPES.get(endpoint["inputs_kind"], (Any, None))
    answer = ANSWER_TYPES.get(endpoint["answers_kind"], Any)
    # An unbatched request's answers leave as one Response built here: the bytes BentoML's output handling
    # writes (validated against the declared type, dumped in JSON mode, json.dumps), without its output model
    # per response and its extra empty body message through every middleware: less server CPU per request
    # for a small model (an interleaved A/B, wrk at 8 clients). A batch's answers go back to BentoML's
    # dispatcher, which splits them per request.
    declared = TypeAdapter(list[answer])

    async def answers(self, *batch, **request):
        def run(items: list) -> list:  # the model's own edge method, answers as JSON values (Predictor.answers)
            return self.predictor.answers(to_edge(items) if to_edge else items)

        if batch:
            return await self.infer(run, batch[0])
        out = declared.dump_python(declared.validate_python(await self.infer(run, request[key])), mode="json")
        return Response(json.dumps(out).encode(), media_type="application/json")

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # The content type is stated because BentoML otherwise derives it from the output's JSON schema on
    # every response: measured at ~12% of a worker's CPU time at full load.
    answers.__signature__ = inspect.Signature(
        [inspect.Parameter("self", positional), inspect.Parameter(key, positional, annotation=list[item])],
        return_annotation=Annotated[list[answer], ContentType("application/json")])
    answers.__name__ = answers.__qualname__ = endpoint["route"].strip("/").replace("/", "_")  # the client's method
    return bentoml.api(answers, route=endpoint["route"], batchable=SETTINGS["batching"],
                       max_batch_size=SETTINGS["max_batch_size"], max_latency_ms=SETTINGS["max_latency_ms"])


# Adaptive batching off: a decoding loop runs one prompt at a time (lifecycle.edge: no padding, the same
# answer whatever else is in flight), so batching would only queue requests behind each other.
async def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                   time_budget_s: float | None = None,
                   ) -> Annotated[list[Generated], ContentType("application/json")]:
    run = functools.partial(self.predictor.generate, **_generate_options(max_new_tokens, temperature, top_k, top_p,
                                                                         seed, stop, time_budget_s))
    # always in the thread: a decoding loop would hold the event loop (and /livez) for its whole length
    return await anyio.to_thread.run_sync(run, prompts, limiter=self.busy)


async def generate_stream(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0,
                          top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                          stop: list[str] | None = None, time_budget_s: float | None = None,
                          ) -> AsyncGenerator[str, None]:
    """POST /generate streamed: server-sent events `token` ({"index", "token", "text"}) per new token, `answer`
    per prompt (what /generate answers for it, finish_reason "time" when the budget is spent), then `done`.
    Each decoding step is one hop to the thread (one inference at a time, as for every route): tokens reach
    the client as they come, and a client that goes away stops the decoding at its next step."""
    events = self.predictor.stream(prompts, **_generate_options(max_new_tokens, temperature, top_k, top_p,
                                                                seed, stop, time_budget_s))
    while (event := await anyio.to_thread.run_sync(next, events, None, limiter=self.busy)) is not None:
        yield f"event: {'answer' if 'answer' in event else 'token'}\ndata: {json.dumps(event)}\n\n"
    yield "event: done\ndata: {}\n\n"


def _generate_options(max_new_tokens, temperature, top_k, top_p, seed, stop, time_budget_s) -> dict:
    """A /generate request's options as Predictor.generate / stream take them: max_new_tokens capped at the
    settings' max_new_tokens, and the time budget for the whole request at most the settings' budget."""
    cap = SETTINGS.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    budget = SETTINGS.get("generate_time_budget_s") or min(DEFAULT_TIME_BUDGET_S, SETTINGS["timeout_s"] / 2)
    return dict(max_new_tokens=min(max_new_tokens, cap), temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, stop=stop, time_budget_s=min(budget, time_budget_s or budget))


def generator_apis(endpoint: dict) -> dict:
    return {"generate": bentoml.api(generate, route=endpoint["route"]),
            "generate_stream": bentoml.api(generate_stream, route=STREAM_ROUTE)}


def one_api(endpoint: dict) -> dict:
    api = answers_api(endpoint)
    return {api.name: api}


# answers kind -> its endpoints, by name: a generator's ("tokens") take options beside its prompts and can
# stream; every other kind's is answers_api's one route.
OWN_ENDPOINTS = {"tokens": generator_apis}


for _name, _api in OWN_ENDPOINTS.get(ENDPOINT["answers_kind"], one_api)(ENDPOINT).items():
    setattr(Classifier, _name, _api)
Classifier = bentoml.service(
    name="lifecycle_classifier",
    workers=SETTINGS["workers"],
    threads=1,  # BentoML's own thread pool stays idle: Classifier.infer runs one inference at a time
    # max_concurrency is held by RequestLimits, which takes a slot only once the body has arrived.
    traffic={"timeout": SETTINGS["timeout_s"]},
    logging={"access": {"enabled": SETTINGS["access_log"]}},
    # BentoML opens an OpenTelemetry span for every request even with no exporter configured: 1.1 ms
    # of CPU per request here (4.9 -> 3.9 ms for the small model). Off unless the settings ask for it.
    **({} if SETTINGS["tracing"] else {"tracing": {"excluded_urls": [".*"]}}),
)(Classifier)
Classifier.mount_asgi_app(_metadata_app(Classifier.inner.served), path="/")
Classifier.add_asgi_middleware(RequestLimits, settings=SETTINGS, served=Classifier.inner.served, endpoint=ENDPOINT)
install_header_timeout(SETTINGS.get("header_timeout_s"))
