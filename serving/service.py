"""The BentoML service: answers with an export/quantize artifact or an edge bundle, through
`lifecycle.edge` (the one inference path shared with the bundle and the `serve` stage), on the route
the model's task declares. BentoML imports this module by its path in every worker, so its siblings are
top-level modules: request_limits (RequestLimits, the ASGI middleware that checks every request before it
takes a concurrency slot) and http_guards (error bodies, the JSON parser, the header timeout); the checks of
a request's payload are lifecycle.edge.requests. `lifecycle build` packs the three into a Bento.

    lifecycle serve runs/tiny            # writes the serving config below and runs `bentoml serve`
    curl -s 127.0.0.1:3000/classify -H 'content-type: application/json' -d '{"texts": ["some text"]}'

Everything comes from one JSON file named by $LIFECYCLE_SERVING_CONFIG (or `serving.json` beside this
file, as inside a Bento), written by `lifecycle.serving`: the model (a path, or a BentoML model-store
tag), its name, version (the artifact hash), gate results and the verdict it is served under, and the
settings (workers, onnxruntime threads, batching, limits). The decorators below read it at import time,
in every worker.

Endpoints: POST /classify {"texts": [...]} -> [{"label", "score", "scores"}, ...] (one per text, same
order) for a classifier; POST /embed {"texts": [...]} -> [[float, ...], ...] (pooled, normalised as in
the graph) for an embedding model; POST /predict {"rows": [{column: value, ...}, ...]} -> the same
answers as /classify for a table classifier (null: a missing value; the preprocessing inside the model
directory turns raw rows into the graph's inputs), POST /regress {"rows": [...]} -> [{"value": float}, ...]
for a table regressor, POST /score {"rows": [...]} -> [{"anomaly_score": float}, ...] for a table
anomaly scorer, POST /classify_image (a body of image/png or image/jpeg: one image; multipart/form-data:
one file part per image; or application/json {"images": [base64, ...]}: a batch) -> the same answers as
/classify for an image classifier (converted to the model's mode, transparency composited over black,
resized and normalised by the model's own image-processor config), with the same batching and the same
refusals; POST /embed_image (the same bodies, checks and refusals) -> [[float, ...], ...] for an image
embedder; POST /generate {"prompts": [...], optional
"max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "time_budget_s", "stream"} -> [{"text", "tokens", "finish_reason"}, ...]
for a generator (greedy at temperature 0; max_new_tokens capped at the settings' max_new_tokens; a request
stops cleanly after generate_time_budget_s with finish_reason "time"; a prompt with no room left in the
model's context is refused with 413 naming the limit; never adaptively batched; with "stream": true or an
Accept: text/event-stream header, server-sent events as tokens come: see Classifier.generate_stream); the route the
served model has no use for answers 404 with a JSON error. GET /metadata (name, version = artifact hash, gate results,
"verdict": the run's verdict the model is served under ({"passed", "reasons", "override"}; null when the source
has none), labels, settings); BentoML's
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
    422  an image that is recognised but cannot be decoded (truncated, corrupt), an "images" item that is
         not base64, a multipart field that is not a file or more than max_texts files; each message
         names the item ("images"[2]: ..., part "file" (a.png): ...)
    400  a multipart body that cannot be parsed (no boundary, truncated)
    413  body over max_body_bytes (Content-Length, or counted while reading a chunked body)
    408  a body still incomplete after body_timeout_s (the connection is then closed); request headers
         incomplete after header_timeout_s (5 s by default; http_guards: uvicorn has no such limit)
    429  more than max_concurrency requests in flight (split evenly across workers), counted only from
         when a complete, well-formed body has arrived: uploads that trickle in hold no slot
    504  a request still unanswered after timeout_s, counted from its first byte (BentoML)
    503  only with batching on, when BentoML's dispatcher predicts max_latency_ms cannot be met: the
         default (batching off) never answers it, and tuning discards settings that do

Cost per request (2 cores, a 2-layer int8 model whose inference takes 1.3 ms): ~5 ms of CPU with
BentoML's defaults, ~2.5-3 ms here: no tracing spans unless asked for, one-text requests inferred on the
event loop (Classifier.infer), the response content type stated. With several workers, keep-alive
connections are closed after max_connection_age_s so that clients spread over the workers
(RequestLimits.closing).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated

import anyio
import bentoml
from bentoml.validators import ContentType
from http_guards import install_header_timeout
from pydantic import BaseModel
from request_limits import INLINE_MAX_CHARS, STREAM_ROUTE, RequestLimits, Served

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
                             "labels": predictor.labels, "input_counts": served.input_counts,
                             "max_length": predictor.max_length, "over_length": SETTINGS["over_length"],
                             "verdict": MODEL.get("verdict"), "settings": SETTINGS})

    return Starlette(routes=[Route("/metadata", metadata, methods=["GET"])])


@bentoml.service(
    name="lifecycle_classifier",
    workers=SETTINGS["workers"],
    threads=1,  # BentoML's own thread pool stays idle: Classifier.infer runs one inference at a time
    # max_concurrency is held by RequestLimits, which takes a slot only once the body has arrived.
    traffic={"timeout": SETTINGS["timeout_s"]},
    logging={"access": {"enabled": SETTINGS["access_log"]}},
    # BentoML opens an OpenTelemetry span for every request even with no exporter configured: 1.1 ms
    # of CPU per request here (4.9 -> 3.9 ms for the small model). Off unless the settings ask for it.
    **({} if SETTINGS["tracing"] else {"tracing": {"excluded_urls": [".*"]}}),
)
class Classifier:
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
        except BundleError as e:
            print(BUNDLE_REFUSED, e, file=sys.stderr, flush=True)
            raise
        self.predictor.logits([self.predictor.sample_input()])  # first run allocates; keep it off the first request
        self.busy = anyio.CapacityLimiter(1)  # one inference at a time, on the event loop or in the thread
        self.served.predictor = self.predictor

    async def infer(self, fn, texts: list[str]):
        """One short text runs on the event loop: handing it to a thread (anyio, then the GIL hand-back)
        costs ~1.3 ms of CPU per request, as much as the small model's inference (measured: 3.9 -> 2.5 ms
        per request, 1-client p50 5.5 -> 3.3 ms). Its inference is bounded by max_length tokens, but its
        tokenisation by its length in characters only (see INLINE_MAX_CHARS). Long texts and batches go
        to the thread, so that health checks, refusals and the batching dispatcher are answered while
        the tokenizer and onnxruntime work."""
        if len(texts) == 1 and len(texts[0]) <= INLINE_MAX_CHARS and self.busy.borrowed_tokens == 0:
            return fn(texts)
        return await anyio.to_thread.run_sync(fn, texts, limiter=self.busy)

    @bentoml.api(route="/classify", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    # The content type is stated because BentoML otherwise derives it from the output's JSON schema on
    # every response: measured at ~12% of a worker's CPU time at full load.
    async def classify(self, texts: list[str]) -> Annotated[list[Prediction], ContentType("application/json")]:
        return await self.infer(self.predictor.predict, texts)

    @bentoml.api(route="/embed", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    async def embed(self, texts: list[str]) -> Annotated[list[list[float]], ContentType("application/json")]:
        return (await self.infer(self.predictor.embed, texts)).tolist()

    @bentoml.api(route="/predict", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    async def predict(self, rows: list[dict]) -> Annotated[list[Prediction], ContentType("application/json")]:
        return await self.infer(self.predictor.predict_rows, rows)

    @bentoml.api(route="/regress", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    async def regress(self, rows: list[dict]) -> Annotated[list[Regression], ContentType("application/json")]:
        return await self.infer(self.predictor.regress_rows, rows)

    @bentoml.api(route="/score", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    async def score(self, rows: list[dict]) -> Annotated[list[AnomalyScore], ContentType("application/json")]:
        return await self.infer(self.predictor.score_rows, rows)

    @bentoml.api(route="/classify_image", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    async def classify_image(self, images: list[str]) -> Annotated[list[Prediction], ContentType("application/json")]:
        # base64 images already decoded once and checked by RequestLimits.check_images
        return await self.infer(self.from_base64(self.predictor.classify_images), images)

    @bentoml.api(route="/embed_image", batchable=SETTINGS["batching"], max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    async def embed_image(self, images: list[str]) -> Annotated[list[list[float]], ContentType("application/json")]:
        # the same checks as /classify_image (RequestLimits.check_images): only the edge method differs
        return (await self.infer(self.from_base64(self.predictor.embed_images), images)).tolist()

    @staticmethod
    def from_base64(method):
        """An edge image method taking the base64 images of a checked request."""
        import base64

        return lambda images: method([base64.b64decode(i) for i in images])

    # Adaptive batching off: a decoding loop runs one prompt at a time (lifecycle.edge: no padding, the same
    # answer whatever else is in flight), so batching would only queue requests behind each other.
    @bentoml.api(route="/generate")
    async def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                       time_budget_s: float | None = None,
                       ) -> Annotated[list[Generated], ContentType("application/json")]:
        run = functools.partial(self.predictor.generate, **_generate_options(max_new_tokens, temperature, top_k, top_p,
                                                                             seed, stop, time_budget_s))
        # always in the thread: a decoding loop would hold the event loop (and /livez) for its whole length
        return await anyio.to_thread.run_sync(run, prompts, limiter=self.busy)

    @bentoml.api(route=STREAM_ROUTE)
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


Classifier.mount_asgi_app(_metadata_app(Classifier.inner.served), path="/")
Classifier.add_asgi_middleware(RequestLimits, settings=SETTINGS, served=Classifier.inner.served)
install_header_timeout(SETTINGS.get("header_timeout_s"))
