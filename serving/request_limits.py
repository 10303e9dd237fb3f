"""The service's ASGI middleware, RequestLimits: what the model must never see is refused before it takes a
concurrency slot (body size and time, content type, the payload's checks from lifecycle.edge.requests),
then the checked request is replayed to BentoML within one of max_concurrency slots. A sibling of
service.py, imported as a top-level module (BentoML imports the service by path, from its folder)."""

from __future__ import annotations

import base64
import functools
import json
import time
from dataclasses import dataclass, field

import anyio
from file_bodies import FILES, MULTIPART, check_files, decode_files
from http_guards import error, json_errors, parse_json, with_connection_close

from lifecycle.edge import requests as checks

# {"stream": true} (or an Accept: text/event-stream header) on POST /generate: RequestLimits hands the checked
# request to this route, which answers with server-sent events. Not a public route: called directly, it is 404.
STREAM_ROUTE = "/generate_stream"
# A single text shorter than this is inferred on the event loop (Classifier.infer); longer ones, and the
# untruncated tokenisation of over_length "reject", go to a thread. Tokenising costs ~1 us per character
# whatever max_length is (truncation comes after tokenising the whole text): 1 M characters held the
# event loop, /livez included, for ~0.9 s. 2000 characters are ~2 ms, ten times the sample text.
INLINE_MAX_CHARS = 2000
# Never behind the concurrency limit, as in BentoML's own MaxConcurrencyMiddleware.
UNLIMITED_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


@functools.cache
def _admitted_gauge():
    """One gauge per worker process (prometheus_client refuses a second registration of a name); imported
    late, once BentoML has set the worker's multiprocess directory, so that /metrics sums the workers."""
    import prometheus_client

    return prometheus_client.Gauge("lifecycle_requests_admitted", "requests holding a max_concurrency slot",
                                   multiprocess_mode="livesum")


@dataclass
class Served:
    """What one worker serves, shared by the Classifier service (which opens the predictor), RequestLimits and
    GET /metadata: the middleware is built before the model is opened, so it gets this holder, not the model."""

    predictor: object = None  # lifecycle.edge.Predictor, once Classifier.__init__ has opened it
    input_counts: dict = field(default_factory=dict)  # what table rows' checks counted, summed (GET /metadata)


class RequestLimits:
    """ASGI middleware in front of the model's endpoint (`endpoint`: its route, task, inputs kind and request
    key, from the serving config): refuses what the model must never see, each with a JSON {"error": ...}
    body, by the checks of its inputs kind (INPUTS). It reads the body itself (bounded in size and time), so
    an oversized upload costs at most max_body_bytes of memory; the checked body is then replayed to BentoML.

    It also holds the max_concurrency limit, which BentoML is not given: BentoML takes its slot before
    anything reads the body, so 100 uploads sending their bodies slowly held all 32 slots and every
    other request got 429 for as long as they kept sending. Here a request takes a slot only once its
    whole body has arrived and is well-formed JSON of the right shape; an incomplete body is cut off
    after body_timeout_s."""

    def __init__(self, app, settings: dict, served: Served, endpoint: dict):
        self.app = app
        self.s = settings
        self.served = served
        self.endpoint = endpoint
        # how this model's requests are checked, and the media types they may have besides JSON
        self.inputs_check, self.media = INPUTS.get(endpoint["inputs_kind"], (RequestLimits.other_request, ()))
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
            return await error(scope, receive, send, 404, 'POST /generate with {"stream": true} streams')
        route = self.endpoint["route"]
        if scope["path"] != route or scope["method"] != "POST":  # BentoML's 404 or 405, naming the model's route
            return await self.limited(scope, receive, send,
                                      not_found=f"this server serves a {self.endpoint['task']} model: POST {route}")
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json" and media not in self.media:  # includes application/vnd.bentoml+pickle: never unpickle input
            shown = media.decode("latin-1")[:80] or "none"
            allowed = ", ".join(m.decode() for m in self.media) + " or application/json" if self.media else "application/json"
            return await error(scope, receive, send, 415, f"content type must be {allowed} (got {shown})")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.s["max_body_bytes"]):
            return await error(scope, receive, send, 413, f"body over {self.s['max_body_bytes']} bytes")
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
                        return await error(scope, receive, send, 413,
                                            f"body over {self.s['max_body_bytes']} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            # Closing the connection: the rest of a body that slow is not worth reading.
            return await error(scope, receive, with_connection_close(send), 408,
                                f"request body not complete after {self.s['body_timeout_s']:g} s")
        refusal, scope, body, admitted_check = await self.inputs_check(self, scope, b"".join(chunks), headers, media)
        if refusal:
            return await error(scope, receive, send, *refusal)
        await self.forward(scope, receive, send, body, admitted_check)

    # The checks of each inputs kind's requests (INPUTS), before admission: each answers (refusal: (status,
    # message) or None, the scope and body BentoML gets, the check that runs once the request holds a slot).
    async def text_request(self, scope, body: bytes, headers: dict, media: bytes):
        payload, refusal = self.json_checked(body, lambda p: checks.check_texts(p, self.s["max_texts"]))
        if refusal or self.s["over_length"] != "reject":
            return refusal, scope, body, None
        return None, scope, body, functools.partial(self.over_length, payload["texts"])

    async def rows_request(self, scope, body: bytes, headers: dict, media: bytes):
        return self.json_checked(body, self.check_rows)[1], scope, body, None

    async def prompts_request(self, scope, body: bytes, headers: dict, media: bytes):
        payload, refusal = self.json_checked(body, lambda p: checks.check_prompts(p, self.s["max_texts"]))
        if refusal:
            return refusal, scope, body, None
        scope, body = _generate_scope(scope, payload, body, headers)
        return None, scope, body, functools.partial(self.over_context, payload["prompts"])

    async def files_request(self, scope, body: bytes, headers: dict, media: bytes):
        """An image or audio model's request, checked by its inputs kind's Encoded (FILES): one file as the
        body, a multipart upload of files, or a JSON list of base64 files. BentoML gets the checked files as
        the JSON its route declares, whatever the client sent; they are decoded once the request holds a slot."""
        kind = FILES[self.endpoint["inputs_kind"]]
        problem, status, files = await check_files(self.s, kind, body, media, scope)
        if problem:
            return (status, problem), scope, body, None
        body = json.dumps({kind.key: [base64.b64encode(item).decode("ascii") for item in files[1]]}).encode()
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k not in (b"content-type",
                                                                                      b"content-length")]
                 + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        return None, scope, body, functools.partial(decode_files, self.s, kind, *files)

    async def other_request(self, scope, body: bytes, headers: dict, media: bytes):
        """A plug-in workload's inputs kind: its inputs' own check (`check_request(payload, max_items)` -> the
        refusal's message or None) when it has one, else any JSON list under the request key, within max_texts."""
        check = getattr(getattr(self.served.predictor, "inputs", None), "check_request", None)
        key, limit = self.endpoint["request_key"], self.s["max_texts"]
        refusal = self.json_checked(body, lambda p: check(p, limit) if check else checks.check_items(p, key, limit))[1]
        return refusal, scope, body, None

    @staticmethod
    def json_checked(body: bytes, check) -> tuple[object, tuple[int, str] | None]:
        """(the JSON payload, None), or a refusal: 400 for a body that is not JSON, 422 for what `check` refuses."""
        payload, problem = parse_json(body)
        if problem:
            return None, (400, problem)
        problem = check(payload)
        return payload, (422, problem) if problem else None

    async def forward(self, scope, receive, send, body: bytes, admitted_check=None) -> None:
        """The checked body, replayed to BentoML within a concurrency slot (see limited)."""
        if self.closing(scope):
            send = with_connection_close(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.limited(scope, replay, send, admitted_check)

    async def limited(self, scope, receive, send, admitted_check=None, not_found: str | None = None) -> None:
        """The app, within one of this worker's max_concurrency slots, or 429 when none is free. Work that
        costs in proportion to the request (tokenising long texts, decoding images) is `admitted_check`: it
        runs with the slot held and answers (status, message) to refuse, None to go on. `not_found`: what
        the app's 404 adds to its message."""
        if self.slots.value == 0:
            return await error(scope, receive, send, 429, "Too many requests")
        async with self.slots:
            with self.admitted.track_inprogress():
                refusal = admitted_check and await admitted_check()
                if refusal:
                    return await error(scope, receive, send, *refusal)
                await self.app(scope, receive, json_errors(send, not_found))

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

    def check_rows(self, payload) -> str | None:
        """A table model's rows (lifecycle.edge.requests.check_rows); what they count (missing values, unknown
        categories...) adds up in GET /metadata's input_counts."""
        problem, counts = checks.check_rows(payload, self.s["max_texts"], self.served.predictor.table)
        totals = self.served.input_counts
        for kind, per_column in counts.items():
            for column, n in per_column.items():
                totals.setdefault(kind, {})[column] = totals.get(kind, {}).get(column, 0) + n
        return problem

    async def over_context(self, prompts: list[str]) -> tuple[int, str] | None:
        """The first prompt that leaves no room to generate in the model's context (413, naming the limit).
        Tokenised in a thread when long (see INLINE_MAX_CHARS); the generator's tokenizer never truncates,
        so sharing it with the inference thread is safe."""
        predictor = self.served.predictor

        def lengths():
            return [len(predictor.prompt_ids(p)) for p in prompts]

        counts = lengths() if sum(map(len, prompts)) <= INLINE_MAX_CHARS else await anyio.to_thread.run_sync(lengths)
        limit = predictor.max_length
        for i, n in enumerate(counts):
            if n >= limit:
                return 413, (f'"prompts"[{i}] has {n} tokens; the model\'s context is {limit} tokens (prompt and '
                             f"generated tokens together): at most {limit - 1} prompt tokens")
        return None

    async def over_length(self, texts: list[str]) -> tuple[int, str] | None:
        """With over_length "reject": the first text over max_length tokens. Tokenised in a thread when
        long (see INLINE_MAX_CHARS), with a slot held: up to max_body_bytes of text to tokenise."""
        encode = self.untruncated_tokenizer().encode_batch
        if sum(map(len, texts)) <= INLINE_MAX_CHARS:
            encodings = encode(texts)
        else:
            encodings = await anyio.to_thread.run_sync(encode, texts)
        limit = self.served.predictor.max_length
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

            self.tokenizer = Tokenizer.from_file(str(self.served.predictor.root / "tokenizer.json"))
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


# inputs kind -> (RequestLimits' check of its requests, the media types they may have besides application/json).
# Another kind (a plug-in workload's) is checked by RequestLimits.other_request, as JSON only.
INPUTS = {
    "text": (RequestLimits.text_request, ()),
    "rows": (RequestLimits.rows_request, ()),
    "prompts": (RequestLimits.prompts_request, ()),
    **{kind: (RequestLimits.files_request, (*f.media, MULTIPART)) for kind, f in FILES.items()},
}
