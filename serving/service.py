"""The BentoML service: answers with an export/quantize artifact or an edge bundle, through
`lifecycle.edge` (the one inference path shared with the bundle and the `serve` stage), on the route
the model's task declares. One module of ~320 lines on purpose: BentoML imports the service by this
module's path in every worker and packs it into a Bento alone, beside bentofile.yaml.

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
a 404 for an unknown path or a 405 for a wrong method, are rewritten to the same body: _json_errors):

    415  content type other than application/json (BentoML's pickle type included: never unpickled)
    400  body that is not JSON (or not UTF-8), read by the parser BentoML reads it with (_parse_json): so
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
         incomplete after header_timeout_s (5 s by default; _with_header_timeout: uvicorn has no such limit)
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
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated

import anyio
import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel

from lifecycle.edge import BUNDLE_REFUSED, BundleError, Predictor

CONFIG_ENV = "LIFECYCLE_SERVING_CONFIG"
ROUTES = ("/classify", "/embed", "/predict", "/regress", "/score", "/classify_image", "/embed_image", "/generate")  # every POST route below; a model answers on the one its task declares


def _load_config() -> dict:
    path = Path(os.environ.get(CONFIG_ENV) or Path(__file__).with_name("serving.json"))
    if not path.is_file():
        raise RuntimeError(f"no serving config at {path}: start the service with `lifecycle serve SOURCE`, "
                           f"or set {CONFIG_ENV} to a file written by lifecycle.serving")
    return json.loads(path.read_text())


CONFIG = _load_config()
MODEL, SETTINGS = CONFIG["model"], CONFIG["settings"]
LOADED: dict = {}  # this worker's predictor, shared with the middleware and /metadata


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


# POST /generate: what a request may set beside "prompts", with the check of each value.
GENERATE_OPTIONS = {
    "max_new_tokens": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: _number(v) and 0 <= v <= 10, "a number from 0 (greedy) to 10"),
    "top_k": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: no limit)"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "seed": (lambda v: v is None or (_integer(v) and 0 <= v < 2**63), "null or an integer >= 0"),
    "stop": (lambda v: isinstance(v, list) and len(v) <= 8 and all(isinstance(x, str) and 0 < len(x) <= 64 for x in v),
             "a list of at most 8 non-empty strings of at most 64 characters"),
    "time_budget_s": (lambda v: _number(v) and v > 0, "a number of seconds > 0 (capped at the server's budget)"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
}
# {"stream": true} (or an Accept: text/event-stream header) on POST /generate: RequestLimits hands the checked
# request to this route, which answers with server-sent events. Not a public route: called directly, it is 404.
STREAM_ROUTE = "/generate_stream"
DEFAULT_MAX_NEW_TOKENS, DEFAULT_TIME_BUDGET_S = 64, 10.0
DEFAULT_HEADER_TIMEOUT_S = 5.0  # settings' header_timeout_s unset


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


# A single text shorter than this is inferred on the event loop (Classifier.infer); longer ones, and the
# untruncated tokenisation of over_length "reject", go to a thread. Tokenising costs ~1 us per character
# whatever max_length is (truncation comes after tokenising the whole text): 1 M characters held the
# event loop, /livez included, for ~0.9 s. 2000 characters are ~2 ms, ten times the sample text.
INLINE_MAX_CHARS = 2000
# A request's images up to this many pixels are decoded on the event loop (~4 ms); more in a thread.
INLINE_IMAGE_PIXELS = 1 << 20
IMAGE_MEDIA = (b"image/png", b"image/jpeg")  # image bodies an image model takes (besides JSON)
# Never behind the concurrency limit, as in BentoML's own MaxConcurrencyMiddleware.
UNLIMITED_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


@functools.cache
def _admitted_gauge():
    """One gauge per worker process (prometheus_client refuses a second registration of a name); imported
    late, once BentoML has set the worker's multiprocess directory, so that /metrics sums the workers."""
    import prometheus_client

    return prometheus_client.Gauge("lifecycle_requests_admitted", "requests holding a max_concurrency slot",
                                   multiprocess_mode="livesum")


class RequestLimits:
    """ASGI middleware in front of POST /classify and /embed: refuses what the model must never see, each with a
    JSON {"error": ...} body. It reads the body itself (bounded in size and time), so an oversized upload costs
    at most max_body_bytes of memory; the checked body is then replayed to BentoML unchanged.

    It also holds the max_concurrency limit, which BentoML is not given: BentoML takes its slot before
    anything reads the body, so 100 uploads sending their bodies slowly held all 32 slots and every
    other request got 429 for as long as they kept sending. Here a request takes a slot only once its
    whole body has arrived and is well-formed JSON of the right shape; an incomplete body is cut off
    after body_timeout_s."""

    def __init__(self, app, settings: dict):
        self.app = app
        self.s = settings
        self.tokenizer = None  # loaded on first use: the model is opened after the middleware is built
        # Keep-alive connections (client address) -> when their first request came: see closing().
        self.max_age = settings["max_connection_age_s"] if settings["workers"] > 1 else None
        self.opened: dict[tuple, float] = {}
        # Per worker, as BentoML splits it: each worker has its own event loop and its own middleware.
        self.slots = anyio.Semaphore(-(-settings["max_concurrency"] // settings["workers"]))
        self.admitted = _admitted_gauge()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            return await self.app(scope, receive, send)
        if scope["path"] == STREAM_ROUTE:
            return await _error(scope, receive, send, 404, 'POST /generate with {"stream": true} streams')
        if scope["path"] not in ROUTES or scope["method"] != "POST":
            return await self.limited(scope, receive, send)
        predictor = LOADED["predictor"]
        if scope["path"] != predictor.route:
            return await _error(scope, receive, send, 404,
                                f"this server serves a {predictor.task} model: POST {predictor.route}")
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        image_body = predictor.image is not None and media in IMAGE_MEDIA
        upload = predictor.image is not None and media == b"multipart/form-data"
        if media != b"application/json" and not (image_body or upload):  # includes application/vnd.bentoml+pickle: never unpickle input
            shown = media.decode("latin-1")[:80] or "none"
            allowed = ("image/png, image/jpeg, multipart/form-data or application/json" if predictor.image is not None
                       else "application/json")
            return await _error(scope, receive, send, 415, f"content type must be {allowed} (got {shown})")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.s["max_body_bytes"]):
            return await _error(scope, receive, send, 413, f"body over {self.s['max_body_bytes']} bytes")
        chunks, size = [], 0
        try:
            with anyio.fail_after(self.s["body_timeout_s"]):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.s["max_body_bytes"]:
                        return await _error(scope, receive, send, 413,
                                            f"body over {self.s['max_body_bytes']} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            # Closing the connection: the rest of a body that slow is not worth reading.
            return await _error(scope, receive, _with_connection_close(send), 408,
                                f"request body not complete after {self.s['body_timeout_s']:g} s")
        body = b"".join(chunks)
        if predictor.image is not None:
            problem, status, images, payload = await self.check_images(body, image_body, scope if upload else None)
            if problem:
                return await _error(scope, receive, send, status, problem)
            # BentoML gets the checked images as the JSON its route declares, whatever the client sent
            body = json.dumps(payload).encode()
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k not in (b"content-type",
                                                                                          b"content-length")]
                     + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
            return await self.forward(scope, receive, send, body, functools.partial(self.decode_images, *images))
        payload, problem = _parse_json(body)
        if problem:
            return await _error(scope, receive, send, 400, problem)
        problem = self.check(payload, predictor)
        if problem:
            return await _error(scope, receive, send, 422, problem)
        admitted_check = None
        if predictor.generation is not None:
            scope, body = _generate_scope(scope, payload, body, headers)
            admitted_check = functools.partial(self.over_context, payload["prompts"])
        elif "texts" in payload and self.s["over_length"] == "reject":
            admitted_check = functools.partial(self.over_length, payload["texts"])
        await self.forward(scope, receive, send, body, admitted_check)

    async def forward(self, scope, receive, send, body: bytes, admitted_check=None) -> None:
        """The checked body, replayed to BentoML within a concurrency slot (see limited)."""
        if self.closing(scope):
            send = _with_connection_close(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.limited(scope, replay, send, admitted_check)

    async def limited(self, scope, receive, send, admitted_check=None) -> None:
        """The app, within one of this worker's max_concurrency slots, or 429 when none is free. Work that
        costs in proportion to the request (tokenising long texts, decoding images) is `admitted_check`: it
        runs with the slot held and answers (status, message) to refuse, None to go on."""
        if self.slots.value == 0:
            return await _error(scope, receive, send, 429, "Too many requests")
        async with self.slots:
            with self.admitted.track_inprogress():
                refusal = admitted_check and await admitted_check()
                if refusal:
                    return await _error(scope, receive, send, *refusal)
                await self.app(scope, receive, _json_errors(send))

    def closing(self, scope) -> bool:
        """Whether this response ends its keep-alive connection. Workers share one listening socket and
        the kernel gives each connection to one of them for its lifetime; with a few long-lived clients
        it often gives them all to one worker (measured: 8 of 8 wrk connections, then half the req/s of
        2 workers). A connection older than max_connection_age_s is closed after its next response, as
        gRPC's MAX_CONNECTION_AGE does: the client reconnects, and the reconnection goes to whichever
        worker is waiting in accept(), i.e. the less busy one."""
        client = scope.get("client")
        if not self.max_age or not client:
            return False
        now, key = time.monotonic(), tuple(client)
        if now - self.opened.setdefault(key, now) < self.max_age:
            if len(self.opened) > 10_000:  # addresses of connections that closed on their own
                self.opened = {k: t for k, t in self.opened.items() if now - t < self.max_age}
            return False
        del self.opened[key]
        return True

    async def check_images(self, body: bytes, image_body: bool, upload=None):
        """(problem, HTTP status, (images, names), {"images": [base64, ...]}) for an image model's request: one
        image as the body, a multipart upload (`upload`: its scope) of image files, or a JSON list of base64
        images. Only the images' headers are read here, before admission (lifecycle.edge.open_image: format,
        mode, each image's pixels, then the request's pixel budget); decode_images decodes them once the
        request holds a slot, so the model never sees a bad one and the message names the item."""
        import base64

        from lifecycle import edge

        if image_body:
            items, names = [body], ["the image"]
        elif upload is not None:
            problem, status, items, names = await self.uploaded_images(body, upload)
            if problem:
                return problem, status, None, None
        else:
            payload, problem = _parse_json(body)
            if problem:
                return problem, 400, None, None
            if not isinstance(payload, dict) or set(payload) != {"images"}:
                return ('expected a JSON object with exactly one key, "images": a list of base64 PNG/JPEG images '
                        "(or one image as the body, content type image/png or image/jpeg)"), 422, None, None
            listed = payload["images"]
            if not isinstance(listed, list) or not listed:
                return '"images" must be a non-empty list of base64 strings', 422, None, None
            if len(listed) > self.s["max_texts"]:
                return (f'"images" has {len(listed)} items; the limit is {self.s["max_texts"]} per request', 422,
                        None, None)
            items, names = [], [f'"images"[{i}]' for i in range(len(listed))]
            for name, item in zip(names, listed):
                if not isinstance(item, str):
                    return f"{name} is a {type(item).__name__}, not a base64 string", 422, None, None
                try:
                    items.append(base64.b64decode(item, validate=True))
                except ValueError:
                    return f"{name} is not valid base64", 422, None, None
        pixels = self.s.get("max_image_pixels") or edge.MAX_IMAGE_PIXELS
        formats = self.s.get("image_formats") or edge.IMAGE_FORMATS
        opened = []
        for name, item in zip(names, items):
            try:
                opened.append(edge.open_image(item, pixels, formats))
            except edge.ImageError as exc:
                return f"{name}: {exc.reason}", exc.status, None, None
        try:
            edge.check_request_pixels(opened, self.s.get("max_request_pixels") or edge.MAX_REQUEST_PIXELS)
        except edge.ImageError as exc:
            return exc.reason, exc.status, None, None
        return None, 200, (opened, names), {"images": [base64.b64encode(item).decode("ascii") for item in items]}

    async def decode_images(self, images: list, names: list[str]) -> tuple[int, str] | None:
        """The opened images of a checked request decoded whole, with its concurrency slot held; in a thread
        unless small (see INLINE_IMAGE_PIXELS). (status, message naming the image) for one that fails."""
        from lifecycle.edge import ImageError, load_image

        def decode_all():
            for name, im in zip(names, images):
                try:
                    load_image(im)
                except ImageError as exc:
                    return exc.status, f"{name}: {exc.reason}"
            return None

        if sum(im.size[0] * im.size[1] for im in images) <= INLINE_IMAGE_PIXELS:
            return decode_all()
        return await anyio.to_thread.run_sync(decode_all)

    async def uploaded_images(self, body: bytes, scope) -> tuple[str | None, int, list[bytes], list[str]]:
        """(problem, HTTP status, images, their names) of a multipart/form-data body (already read, within
        max_body_bytes): every part must be a file, at most max_texts of them, in the order sent. Parsed by
        Starlette's parser (python-multipart), as BentoML's own form inputs are."""
        from starlette.datastructures import Headers, UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream():
            yield body

        limit = self.s["max_texts"]
        try:  # the parser stops at the first file over the limit
            form = await MultiPartParser(Headers(scope=scope), stream(), max_files=limit, max_fields=limit).parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                return f"multipart body has more than {limit} files; the limit is {limit} per request", 422, [], []
            return f"multipart body: {exc.message}", 400, [], []
        try:
            parts = form.multi_items()
            field = next((name for name, value in parts if not isinstance(value, UploadFile)), None)
            if field is not None or not parts:
                shown = f'field "{field}" is not a file' if field is not None else "body has no parts"
                return f"multipart {shown}; send each image as a file part", 422, [], []
            return None, 200, [await f.read() for _, f in parts], [f'part "{n}" ({f.filename})' for n, f in parts]
        finally:
            await form.close()

    def check(self, payload, predictor) -> str | None:
        if predictor.generation is not None:
            return self.check_generate(payload)
        key, what = ("rows", "objects (column -> value)") if predictor.table is not None else ("texts", "strings")
        if not isinstance(payload, dict) or set(payload) != {key}:
            return f'expected a JSON object with exactly one key, "{key}": a list of {what}'
        texts = payload[key]
        if not isinstance(texts, list) or not texts:
            return f'"{key}" must be a non-empty list of {what}'
        if len(texts) > self.s["max_texts"]:
            return f'"{key}" has {len(texts)} items; the limit is {self.s["max_texts"]} per request'
        if predictor.table is not None:
            return self.check_rows(texts, predictor)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            return f'"texts"[{bad}] is a {type(texts[bad]).__name__}, not a string'
        return None

    def check_generate(self, payload) -> str | None:
        """{"prompts": [str, ...], and optionally the GENERATE_OPTIONS}; max_new_tokens above the server's cap
        is not refused: it is capped (the answer's finish_reason says "length")."""
        if not isinstance(payload, dict) or "prompts" not in payload or set(payload) - {"prompts", *GENERATE_OPTIONS}:
            return ('expected a JSON object with "prompts" (a list of strings) and optionally '
                    + ", ".join(f'"{k}"' for k in GENERATE_OPTIONS))
        prompts = payload["prompts"]
        if not isinstance(prompts, list) or not prompts:
            return '"prompts" must be a non-empty list of strings'
        if len(prompts) > self.s["max_texts"]:
            return f'"prompts" has {len(prompts)} items; the limit is {self.s["max_texts"]} per request'
        bad = next((i for i, t in enumerate(prompts) if not isinstance(t, str)), None)
        if bad is not None:
            return f'"prompts"[{bad}] is a {type(prompts[bad]).__name__}, not a string'
        for key, (valid, what) in GENERATE_OPTIONS.items():
            if key in payload and not valid(payload[key]):
                return f'"{key}" must be {what}'
        return None

    async def over_context(self, prompts: list[str]) -> tuple[int, str] | None:
        """The first prompt that leaves no room to generate in the model's context (413, naming the limit).
        Tokenised in a thread when long (see INLINE_MAX_CHARS); the generator's tokenizer never truncates,
        so sharing it with the inference thread is safe."""
        predictor = LOADED["predictor"]

        def lengths():
            return [len(predictor.prompt_ids(p)) for p in prompts]

        counts = lengths() if sum(map(len, prompts)) <= INLINE_MAX_CHARS else await anyio.to_thread.run_sync(lengths)
        limit = predictor.max_length
        for i, n in enumerate(counts):
            if n >= limit:
                return 413, (f'"prompts"[{i}] has {n} tokens; the model\'s context is {limit} tokens (prompt and '
                             f"generated tokens together): at most {limit - 1} prompt tokens")
        return None

    def check_rows(self, rows: list, predictor) -> str | None:
        """A table model's rows against its schema, with the transform the model runs (lifecycle.edge):
        the first refusal names the column. What it counts (missing values, unknown categories, values
        outside the training range, extra columns) adds up in /metadata's input_counts."""
        from lifecycle.edge import RowError

        try:
            _, counts = predictor.table.transform_rows(rows)
        except RowError as exc:
            return f'"rows": {exc}'
        totals = LOADED.setdefault("input_counts", {})
        for kind, per_column in counts.items():
            for column, n in per_column.items():
                totals.setdefault(kind, {})[column] = totals.get(kind, {}).get(column, 0) + n
        return None

    async def over_length(self, texts: list[str]) -> tuple[int, str] | None:
        """With over_length "reject": the first text over max_length tokens. Tokenised in a thread when
        long (see INLINE_MAX_CHARS), with a slot held: up to max_body_bytes of text to tokenise."""
        encode = self.untruncated_tokenizer().encode_batch
        if sum(map(len, texts)) <= INLINE_MAX_CHARS:
            encodings = encode(texts)
        else:
            encodings = await anyio.to_thread.run_sync(encode, texts)
        limit = LOADED["predictor"].max_length
        for i, enc in enumerate(encodings):
            if len(enc.ids) > limit:
                return 422, (f'"texts"[{i}] has {len(enc.ids)} tokens; the limit is {limit} '
                             "(this server rejects over-long texts instead of truncating them)")
        return None

    def untruncated_tokenizer(self):
        # A tokenizer of its own: the predictor's is in use by the inference thread, and switching
        # its truncation off and on from here would race with it.
        if self.tokenizer is None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(LOADED["predictor"].root / "tokenizer.json"))
            self.tokenizer.no_truncation()
            self.tokenizer.no_padding()
        return self.tokenizer


def _generate_scope(scope, payload: dict, body: bytes, headers: dict) -> tuple[dict, bytes]:
    """A checked /generate request as BentoML gets it: to STREAM_ROUTE when it asks for a stream ({"stream":
    true}, or Accept: text/event-stream unless "stream" is false), and without the "stream" key either way."""
    streamed = b"text/event-stream" in headers.get(b"accept", b"").lower()
    if "stream" in payload:
        streamed = payload.pop("stream")
        body = json.dumps(payload).encode()
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                 + [(b"content-length", str(len(body)).encode())]}
    if streamed:
        scope = {**scope, "path": STREAM_ROUTE, "raw_path": STREAM_ROUTE.encode()}
    return scope, body


def _parse_json(body: bytes) -> tuple[object, str | None]:
    """(payload, None), or (None, the 400 message). Parsed by pydantic-core's parser, the one BentoML reads
    the replayed body with: what it would refuse (a lone UTF-16 surrogate, nesting over 200 levels, an
    integer over 4300 digits, bytes that are not UTF-8) is refused here first, as our own 400, instead of
    by its validator with tracebacks in the log (or, for a /generate prompt, by the tokenizer: a 500)."""
    from pydantic_core import from_json

    try:
        return from_json(body), None
    except ValueError as exc:
        shown = "nested too deeply" if "recursion limit" in str(exc) else str(exc)[:200]
        if "hex escape" in shown:  # the parser's words for a lone surrogate ("\ud800" not followed by "\udc00")
            shown += r"; a \ud800-\udfff escape must be one half of a UTF-16 surrogate pair"
        return None, f"body is not valid JSON ({shown})"


def _json_errors(send):
    """The app's send with its own error answers (Starlette's plain-text 404 and 405, BentoML's validation
    errors with their "detail" list) rewritten to this service's one error body, {"error": "..."}."""
    from http import HTTPStatus

    from pydantic_core import from_json

    start, chunks = None, []

    async def wrapped(message):
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        raw = b"".join(chunks)
        try:
            answer = from_json(raw)
        except ValueError:
            answer = raw.decode("utf-8", "replace").strip()
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            details = [f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in answer.get("detail") or []
                       if isinstance(d, dict)]
            answer = "; ".join([answer["error"], *details])
        if not isinstance(answer, str) or not answer:
            answer = HTTPStatus(start["status"]).phrase
        body = json.dumps({"error": answer}).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        await send({**start, "headers": [*headers, (b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _with_header_timeout(protocol: type, seconds: float) -> type:
    """uvicorn's HTTP protocol class with a header timeout, which uvicorn lacks: a request whose headers are
    not complete `seconds` after its first byte (or after its connection opened, for a connection's first
    request) gets 408 and its connection is closed; a new connection that sends nothing is closed without
    an answer. Without it, a client trickling header bytes holds its connection forever (each byte also
    cancels uvicorn's keep-alive timer). An idle kept-alive connection stays uvicorn's to close (its
    keep-alive timeout): closing it here too would race clients reusing it. Headers are complete when
    uvicorn starts a new request cycle, in both its parsers (httptools and h11): nothing here depends on one."""

    class HeaderTimeout(protocol):
        header_timeout = True

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._partial = False
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            if not self._armed and (self.cycle is None or self.cycle.response_complete):
                self._await_headers()  # the first byte of the next request on a kept-alive connection
            self._partial = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._armed = self._partial = False

        def _await_headers(self) -> None:
            self._armed = True
            self.loop.call_later(seconds, self._headers_late, self.cycle)

        def _headers_late(self, waiting) -> None:
            if self.cycle is not waiting or self.transport.is_closing():
                return  # headers came (uvicorn started a new request cycle), or the connection is gone
            if self._partial:
                body = json.dumps({"error": f"request headers not complete after {seconds:g} s"}).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return HeaderTimeout


def _with_connection_close(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return wrapped


async def _error(scope, receive, send, status: int, message: str) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _metadata_app():
    """GET /metadata: what is being served. BentoML API routes are POST-only, so this is a mounted app."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def metadata(_request):
        predictor = LOADED["predictor"]
        return JSONResponse({"name": MODEL["name"], "version": MODEL["version"], "source": MODEL.get("source"),
                             "gates": MODEL.get("gates", []), "task": predictor.task, "route": predictor.route,
                             "labels": predictor.labels, "input_counts": LOADED.get("input_counts", {}),
                             "max_length": predictor.max_length, "over_length": SETTINGS["over_length"],
                             "verdict": MODEL.get("verdict"), "settings": SETTINGS})

    return Starlette(routes=[Route("/metadata", metadata, methods=["GET"])])


@bentoml.asgi_app(_metadata_app(), path="/")
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
        LOADED["predictor"] = self.predictor

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


Classifier.add_asgi_middleware(RequestLimits, settings=SETTINGS)


def _install_header_timeout() -> None:
    """BentoML builds each worker's uvicorn.Config after importing this module, with the default protocol
    ("auto"), which uvicorn looks up by name when it starts: the one attribute replaced here."""
    import uvicorn.protocols.http.auto as auto

    if not getattr(auto.AutoHTTPProtocol, "header_timeout", False):
        auto.AutoHTTPProtocol = _with_header_timeout(auto.AutoHTTPProtocol, SETTINGS.get("header_timeout_s")
                                                     or DEFAULT_HEADER_TIMEOUT_S)


_install_header_timeout()
