"""Requests whose items are encoded files (an image model's, an audio model's), as RequestLimits checks them: one
file as the body, a multipart/form-data upload of files, or a JSON list of base64 files. Only the files' headers
are read before the request is admitted (format and each file's limits, then the request's budget); they are
decoded once it holds a concurrency slot, so the model never sees a bad one and every refusal names the item.
FILES has one entry per inputs kind. A sibling of request_limits.py, imported as a top-level module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
from http_guards import parse_json

from lifecycle import edge
from lifecycle.edge import requests as checks

# A request's images up to this many pixels are decoded on the event loop (~4 ms); more in a thread.
INLINE_IMAGE_PIXELS = 1 << 20
# A request's clips up to this many seconds are decoded on the event loop (~5 ms of 48 kHz FLAC); more in a thread.
INLINE_AUDIO_SECONDS = 10.0
# max_request_seconds unset: this many clips of max_audio_seconds per request.
REQUEST_SECONDS_PER_CLIP_LIMIT = 4
IMAGE_MEDIA = (b"image/png", b"image/jpeg")  # image bodies an image model takes (besides JSON)
AUDIO_MEDIA = (b"audio/wav", b"audio/x-wav", b"audio/wave", b"audio/flac", b"audio/x-flac")
MULTIPART = b"multipart/form-data"


@dataclass(frozen=True)
class Encoded:
    """An inputs kind whose items are encoded files (images, audio clips), as RequestLimits checks them:
    `open` reads one file's header with the settings' limits; `budget` refuses a request whose files, summed
    from their headers, would cost too much to decode; `decode` decodes one whole, once the request holds a
    slot. Each raises `error`, whose .status and .reason are the answer."""

    key: str  # the JSON request's list key
    noun: str  # one file, in messages: "the image", "send each image as a file part"
    media: tuple[bytes, ...]  # the content types of a body that is one file
    items: Callable  # the JSON form's check (lifecycle.edge.requests): (payload, max_items) -> (problem, [bytes])
    error: type
    open: Callable  # (settings, bytes) -> the opened header
    budget: Callable  # (settings, [opened]) -> None
    decode: Callable  # (settings, opened, bytes) -> None
    inline: Callable  # ([opened]) -> whether to decode them on the event loop


def _open_image(s: dict, data: bytes):
    return edge.open_image(data, s.get("max_image_pixels") or edge.MAX_IMAGE_PIXELS,
                           s.get("image_formats") or edge.IMAGE_FORMATS)


def _audio_limits(s: dict) -> dict:
    """open_audio's and decode_audio's limits from the settings; unset: the edge runtime's own."""
    return {"max_seconds": s.get("max_audio_seconds") or edge.MAX_AUDIO_SECONDS,
            "max_channels": s.get("max_audio_channels") or edge.MAX_CHANNELS,
            "rates": (s.get("min_sample_rate") or edge.SAMPLE_RATES[0], s.get("max_sample_rate") or edge.SAMPLE_RATES[1])}


def _seconds(infos: list) -> float:
    return sum(info.frames / info.samplerate for info in infos)


def _check_request_seconds(s: dict, infos: list) -> None:
    """A request's clips (headers only) against its seconds budget: decoding costs about the frames it
    produces, and 10 minutes of silence are ~90 kB of FLAC, so the seconds summed bound a request's work."""
    limit = s.get("max_request_seconds") or REQUEST_SECONDS_PER_CLIP_LIMIT * _audio_limits(s)["max_seconds"]
    if _seconds(infos) > limit:
        raise edge.AudioError(f"the clips hold {_seconds(infos):.1f} s of audio (summed); the limit is {limit:g} s "
                              "per request (max_request_seconds): send fewer or shorter clips per request", 413)


FILES = {
    "images": Encoded("images", "image", IMAGE_MEDIA, checks.image_items, edge.ImageError, _open_image,
                      lambda s, opened: edge.check_request_pixels(opened, s.get("max_request_pixels")
                                                                  or edge.MAX_REQUEST_PIXELS),
                      lambda s, im, data: edge.load_image(im),
                      lambda opened: sum(im.size[0] * im.size[1] for im in opened) <= INLINE_IMAGE_PIXELS),
    "audio": Encoded("audio", "clip", AUDIO_MEDIA, checks.audio_items, edge.AudioError,
                     lambda s, data: edge.open_audio(data, **_audio_limits(s)), _check_request_seconds,
                     lambda s, info, data: edge.decode_audio(data, **_audio_limits(s)),
                     lambda opened: _seconds(opened) <= INLINE_AUDIO_SECONDS),
}


async def check_files(s: dict, kind: Encoded, body: bytes, media: bytes, scope):
    """(problem, HTTP status, (opened, items, names)) for a request of `kind`'s files. Only the files'
    headers are read here, before admission (kind.open: format, each file's limits, then kind.budget: the
    request's); decode_files decodes them once the request holds a slot, so the model never sees a bad
    one, and every message names the item (the clip, "audio"[2], part "file" (a.wav))."""
    if media in kind.media:
        items, names = [body], [f"the {kind.noun}"]
    elif media == MULTIPART:
        problem, status, items, names = await uploaded_files(s, body, scope, kind.noun)
        if problem:
            return problem, status, None
    else:
        payload, problem = parse_json(body)
        if problem:
            return problem, 400, None
        problem, items = kind.items(payload, s["max_texts"])
        if problem:
            return problem, 422, None
        names = [f'"{kind.key}"[{i}]' for i in range(len(items))]
    opened = []
    for name, item in zip(names, items):
        try:
            opened.append(kind.open(s, item))
        except kind.error as exc:
            return f"{name}: {exc.reason}", exc.status, None
    try:
        kind.budget(s, opened)
    except kind.error as exc:
        return exc.reason, exc.status, None
    return None, 200, (opened, items, names)


async def decode_files(s: dict, kind: Encoded, opened: list, items: list[bytes], names: list[str]):
    """The files of a checked request decoded whole, with its concurrency slot held; in a thread unless
    small (kind.inline). (status, message naming the file) for one that fails, else None."""
    def decode_all():
        for name, header, item in zip(names, opened, items):
            try:
                kind.decode(s, header, item)
            except kind.error as exc:
                return exc.status, f"{name}: {exc.reason}"
        return None

    return decode_all() if kind.inline(opened) else await anyio.to_thread.run_sync(decode_all)


async def uploaded_files(s: dict, body: bytes, scope, noun: str) -> tuple[str | None, int, list[bytes], list[str]]:
    """(problem, HTTP status, files, their names) of a multipart/form-data body (already read, within
    max_body_bytes): every part must be a file, at most max_texts of them, in the order sent. Parsed by
    Starlette's parser (python-multipart), as BentoML's own form inputs are."""
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    limit = s["max_texts"]
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
            return f"multipart {shown}; send each {noun} as a file part", 422, [], []
        return None, 200, [await f.read() for _, f in parts], [f'part "{n}" ({f.filename})' for n, f in parts]
    finally:
        await form.close()
