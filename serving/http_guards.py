"""HTTP-level helpers of the service's request limits (serving/request_limits.py): the one error body
{"error": ...}, BentoML's and Starlette's own error answers rewritten to it, the JSON parser BentoML reads
bodies with, closing a connection after its response, and the header timeout uvicorn lacks. A sibling of
service.py, imported as a top-level module (BentoML imports the service by path, from its folder)."""

from __future__ import annotations

import json

DEFAULT_HEADER_TIMEOUT_S = 5.0  # settings' header_timeout_s unset


def parse_json(body: bytes) -> tuple[object, str | None]:
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


def json_errors(send, not_found: str | None = None):
    """The app's send with its own error answers (Starlette's plain-text 404 and 405, BentoML's validation
    errors with their "detail" list) rewritten to this service's one error body, {"error": "..."}; a 404's
    followed by `not_found` (where to go instead) when given."""
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
        if start["status"] == 404 and not_found:
            answer = f"{answer}: {not_found}"
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


def with_connection_close(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return wrapped


async def error(scope, receive, send, status: int, message: str) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def install_header_timeout(seconds: float | None) -> None:
    """BentoML builds each worker's uvicorn.Config after importing the service, with the default protocol
    ("auto"), which uvicorn looks up by name when it starts: the one attribute replaced here."""
    import uvicorn.protocols.http.auto as auto

    if not getattr(auto.AutoHTTPProtocol, "header_timeout", False):
        auto.AutoHTTPProtocol = _with_header_timeout(auto.AutoHTTPProtocol, seconds or DEFAULT_HEADER_TIMEOUT_S)
