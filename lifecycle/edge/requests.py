"""The checks of a request's JSON payload that need no server: each takes the parsed payload, the most items
a request may hold (the serving settings' max_texts) and what the model's inputs need, and answers the
refusal's message (the service sends it as 422) or None. The BentoML service runs them before a request
takes a concurrency slot; they read no file and start no thread, so they are tested without a server.

    check_texts(payload, 32)                      # {"texts": [str, ...]}
    check_rows(payload, 32, predictor.table)      # {"rows": [{column: value}, ...]} -> (problem, counts)
    check_prompts(payload, 32)                    # {"prompts": [str, ...], and GENERATE_OPTIONS}
    image_items(payload, 32)                      # {"images": [base64, ...]} -> (problem, the decoded bytes)
    audio_items(payload, 32)                      # {"audio": [base64, ...]} -> (problem, the decoded bytes)
"""

from __future__ import annotations

import base64

from .table_inputs import RowError


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


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


def _listed(payload, key: str, what: str, max_items: int) -> str | None:
    """{key: [...]} and nothing else, a non-empty list of at most max_items."""
    if not isinstance(payload, dict) or set(payload) != {key}:
        return f'expected a JSON object with exactly one key, "{key}": a list of {what}'
    return _items(payload[key], key, what, max_items)


def check_items(payload, key: str, max_items: int) -> str | None:
    """{key: [JSON value, ...]}: a plug-in inputs kind's request when its inputs have no check of their own."""
    return _listed(payload, key, "JSON values", max_items)


def _items(items, key: str, what: str, max_items: int) -> str | None:
    if not isinstance(items, list) or not items:
        return f'"{key}" must be a non-empty list of {what}'
    if len(items) > max_items:
        return f'"{key}" has {len(items)} items; the limit is {max_items} per request'
    return None


def _strings(items: list, key: str) -> str | None:
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    return None if bad is None else f'"{key}"[{bad}] is a {type(items[bad]).__name__}, not a string'


def check_texts(payload, max_items: int) -> str | None:
    """{"texts": [str, ...]} for a text model."""
    return _listed(payload, "texts", "strings", max_items) or _strings(payload["texts"], "texts")


def check_rows(payload, max_items: int, table) -> tuple[str | None, dict]:
    """{"rows": [...]} for a table model, each row checked with the transform the model runs (`table`: its
    TablePreprocessing): (the first refusal, naming the column, or None; what the transform counted:
    missing values, unknown categories, values outside the training range, extra columns)."""
    problem = _listed(payload, "rows", "objects (column -> value)", max_items)
    if problem:
        return problem, {}
    try:
        _, counts = table.transform_rows(payload["rows"])
    except RowError as exc:
        return f'"rows": {exc}', {}
    return None, counts


def check_prompts(payload, max_items: int) -> str | None:
    """{"prompts": [str, ...], and optionally the GENERATE_OPTIONS} for a generator; max_new_tokens above the
    server's cap is not refused: the service caps it (the answer's finish_reason says "length")."""
    if not isinstance(payload, dict) or "prompts" not in payload or set(payload) - {"prompts", *GENERATE_OPTIONS}:
        return ('expected a JSON object with "prompts" (a list of strings) and optionally '
                + ", ".join(f'"{k}"' for k in GENERATE_OPTIONS))
    problem = _items(payload["prompts"], "prompts", "strings", max_items) or _strings(payload["prompts"], "prompts")
    if problem:
        return problem
    for key, (valid, what) in GENERATE_OPTIONS.items():
        if key in payload and not valid(payload[key]):
            return f'"{key}" must be {what}'
    return None


def encoded_items(payload, key: str, what: str, max_items: int) -> tuple[str | None, list[bytes]]:
    """{key: [base64, ...]} for a model of encoded files (`what` describes them in the refusal): (the first
    refusal or None, the files' bytes). Only the list and the base64 are checked here; the files themselves
    by open_image / open_audio."""
    if not isinstance(payload, dict) or set(payload) != {key}:
        return f'expected a JSON object with exactly one key, "{key}": a list of base64 {what}', []
    problem = _items(payload[key], key, "base64 strings", max_items)
    if problem:
        return problem, []
    items = []
    for i, item in enumerate(payload[key]):
        if not isinstance(item, str):
            return f'"{key}"[{i}] is a {type(item).__name__}, not a base64 string', []
        try:
            items.append(base64.b64decode(item, validate=True))
        except ValueError:
            return f'"{key}"[{i}] is not valid base64', []
    return None, items


def image_items(payload, max_items: int) -> tuple[str | None, list[bytes]]:
    """{"images": [base64, ...]} for an image model."""
    return encoded_items(payload, "images", "PNG/JPEG images (or one image as the body, content type image/png "
                         "or image/jpeg)", max_items)


def audio_items(payload, max_items: int) -> tuple[str | None, list[bytes]]:
    """{"audio": [base64, ...]} for an audio model."""
    return encoded_items(payload, "audio", "WAV/FLAC files (or one file as the body, content type audio/wav or "
                         "audio/flac)", max_items)
