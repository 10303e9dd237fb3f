"""How the BentoML service (serving/service.py) runs: its settings, where its files are, and the one
JSON config it reads (model + settings)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from lifecycle import LifecycleError
from lifecycle.artifact import write_json
from lifecycle.edge import MAX_AUDIO_SECONDS, MAX_CHANNELS, SAMPLE_RATES
from lifecycle.schema import Strict, unset
from lifecycle.serving.source import Served

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # lifecycle/, whose __init__.py and edge/ a Bento copies


def _service_dir() -> Path:
    """serving/ (service.py + bentofile.yaml): installed as lifecycle._service, or beside the package in
    a source tree put on sys.path without installing. Found by its package name, never as `serving`:
    a top-level `serving` on sys.path would be this folder, not lifecycle.serving."""
    import importlib.util

    beside = PACKAGE_DIR.parent / "serving"
    if (beside / "service.py").is_file() and (beside / "bentofile.yaml").is_file():
        # a source tree: the service that goes with this very package (an editable install of another
        # checkout would otherwise map lifecycle._service to that checkout's serving/)
        return beside
    spec = importlib.util.find_spec("lifecycle._service")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return beside


SERVICE_DIR = _service_dir()
CONFIG_ENV = "LIFECYCLE_SERVING_CONFIG"  # read by serving/service.py
STORED_SUBDIR = "model"  # inside a BentoML model-store entry (serving/service.py reads the same name)
# One 200-character text per request: the load the hand-tuned figures in issue 10 were measured with.
SAMPLE_TEXT = ("Shares in the chip maker rose sharply on Tuesday after it reported record quarterly profits "
               "and raised its forecast for the year, citing strong demand for data centre processors worldwide.")


class ServingSettings(Strict):
    """How the service runs. Defaults are safe for any model; `lifecycle serve --tune` finds faster ones."""

    workers: int = Field(1, ge=1)  # processes, sharing one listening socket
    # With several workers, a keep-alive connection older than this is closed after its next response so
    # that the client reconnects to the less busy worker: left alone, the kernel may give every
    # connection of a few long-lived clients to one worker (serving/service.py). None: never.
    max_connection_age_s: float | None = Field(2.0, gt=0)
    ort_threads: int | None = Field(None, ge=1)  # onnxruntime threads per worker; None: cores // workers
    ort_spinning: bool = False  # spinning threads burn the cores that request handling needs
    batching: bool = False  # BentoML adaptive batching: 1.0-1.4x on CPU, and 503s if max_latency_ms is low
    max_batch_size: int = Field(32, ge=2)  # texts per batched model call
    max_latency_ms: int = Field(2000, gt=0)  # batching only: the dispatcher answers 503 past this estimate
    max_concurrency: int = Field(32, ge=1)  # requests in flight (split across workers); more get 429
    timeout_s: float = Field(30.0, gt=0)  # a request still running after this gets 504
    # A body still incomplete after this gets 408 and its connection is closed. Bodies take no
    # concurrency slot while they arrive, so a slow upload costs a connection, not the service.
    # timeout_s counts from the request's first byte too: set below this, its 504 comes first.
    body_timeout_s: float = Field(10.0, gt=0)
    # A request whose headers are not complete this long after its first byte (a connection's first
    # request: after it opened) gets 408 and its connection is closed: uvicorn has no header timeout, and
    # a client trickling header bytes would hold its connection forever. None: 5 s (serving/service.py).
    header_timeout_s: float | None = Field(None, gt=0, exclude_if=unset)
    max_texts: int = Field(64, ge=1)  # texts per request; more get 422
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger bodies get 413
    # A text longer than the model's max_length tokens: "truncate" (as in training and the edge bundle)
    # or "reject" with 422, for callers who must know that the model did not see the whole text.
    over_length: Literal["truncate", "reject"] = "truncate"
    # Image models (POST /classify_image): the most pixels (width x height, read from the image's header
    # before anything is decoded: 413 above it) and the formats taken (415 otherwise). None: the edge
    # runtime's defaults, lifecycle.edge.MAX_IMAGE_PIXELS (4096 x 4096) and PNG + JPEG.
    max_image_pixels: int | None = Field(None, ge=1, exclude_if=unset)
    image_formats: list[Literal["PNG", "JPEG"]] | None = Field(None, min_length=1, exclude_if=unset)
    # The most pixels (width x height summed over a request's images, read from their headers) one request
    # may make the server decode: decoding costs about its pixels, and happens inside a concurrency slot.
    # 413 above it. None: lifecycle.edge.MAX_REQUEST_PIXELS (2 x 4096 x 4096).
    max_request_pixels: int | None = Field(None, ge=1, exclude_if=unset)
    # Audio models (POST /classify_audio), each limit read from a clip's header before a sample is decoded:
    # the longest clip (413 above it), the most channels and the sample rates taken (415 otherwise; a taken
    # rate is resampled to the model's). They can only narrow the edge runtime's own limits, which decode
    # each clip again for the model. None: those limits (lifecycle.edge: 30 s, stereo, 8000 to 48000 Hz).
    max_audio_seconds: float | None = Field(None, gt=0, le=MAX_AUDIO_SECONDS, exclude_if=unset)
    max_audio_channels: int | None = Field(None, ge=1, le=MAX_CHANNELS, exclude_if=unset)
    min_sample_rate: int | None = Field(None, ge=SAMPLE_RATES[0], le=SAMPLE_RATES[1], exclude_if=unset)
    max_sample_rate: int | None = Field(None, ge=SAMPLE_RATES[0], le=SAMPLE_RATES[1], exclude_if=unset)
    # The most seconds of audio (summed over a request's clips, from their headers) one request may make the
    # server decode, inside a concurrency slot: 413 above it. None: 4 x max_audio_seconds.
    max_request_seconds: float | None = Field(None, gt=0, exclude_if=unset)
    # Generators (POST /generate): a request's max_new_tokens is capped at this; and the decoding loop of one
    # request stops cleanly (finish_reason "time", the tokens so far) after generate_time_budget_s, which
    # should sit below timeout_s so the answer comes before BentoML's 504. None: 64 tokens, 10 s.
    max_new_tokens: int | None = Field(None, ge=1, exclude_if=lambda v: v is None)
    generate_time_budget_s: float | None = Field(None, gt=0, exclude_if=lambda v: v is None)
    access_log: bool = False  # one log line per request costs CPU at hundreds of requests/s
    tracing: bool = False  # BentoML's OpenTelemetry spans: ~1.1 ms of CPU per request; on for an exporter

    def resolved(self) -> dict:
        """As written for the service: ort_threads filled in."""
        threads = self.ort_threads or max(1, (os.cpu_count() or 1) // self.workers)
        return self.model_dump(mode="json") | {"ort_threads": threads}


def load_settings(served: Served) -> ServingSettings:
    """Tuned settings beside the artifact when `--tune` wrote them, else the defaults."""
    if not served.tuned_path.is_file():
        return ServingSettings()
    try:
        return ServingSettings.model_validate(json.loads(served.tuned_path.read_text())["settings"])
    except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
        raise LifecycleError(f"{served.tuned_path}: unusable serving settings ({exc}); fix or delete the file, "
                             "or rewrite it with `lifecycle serve --tune`") from None


def write_config(served: Served, settings: ServingSettings, path: Path | None = None) -> Path:
    """The one file serving/service.py reads (named by $LIFECYCLE_SERVING_CONFIG)."""
    if path is None:
        fd, name = tempfile.mkstemp(prefix="lifecycle-serving-", suffix=".json")
        os.close(fd)
        path = Path(name)
    write_json(path, {"model": served.service_model(), "settings": settings.resolved()})
    return path
