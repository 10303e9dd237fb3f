"""Serving a model with BentoML (the service itself is serving/service.py, a top-level folder of the
project installed as lifecycle._service), by job:

    settings  ServingSettings, where the service files are, the config file the service reads
    source    what is served: run directory, export/quantize artifact or bundle -> Served
    server    the `bentoml serve` process (start, wait for /readyz, stop; foreground for the CLI)
    loadgen   loopback load: keep-alive clients on raw sockets
    tuning    `lifecycle serve --tune`: measure a grid of settings, keep the best
    commands  `lifecycle serve`
    bento     `lifecycle build`

Measured on 2 CPU cores: adaptive batching gains little on CPU, the HTTP/Python path costs about as
much CPU per request as a small model's inference, and a too-low `max_latency_ms` makes the batching
dispatcher answer 503. So the defaults are one unbatched worker (which can never answer 503) and
`--tune` measures a small grid on the actual model and machine and keeps the fastest error-free setting.

Where a request's CPU goes, from a sampled profile of the workers (py-spy, wrk at 8 clients, a 2-layer
int8 model, two unbatched workers): about half in the model (tokeniser and onnxruntime, a little more
than in-process), most of the rest in BentoML and Starlette (middlewares, routing, request context,
metrics, the endpoint), less in uvicorn and the event loop, a few percent in serving/'s own checks and
serialisation. benchmarks/serving.py records the server's CPU per request beside the model's
(`per_request`). For such a model, 0.8 of its in-process ceiling leaves less CPU per request than its
inference alone takes inside the server: no Python HTTP path on the same cores reaches it.
"""

from lifecycle.serving.bento import build
from lifecycle.serving.commands import serve
from lifecycle.serving.loadgen import LoadResult, json_request, run_load
from lifecycle.serving.server import Server, bentoml_command, foreground, service_command
from lifecycle.serving.settings import (
    CONFIG_ENV,
    SAMPLE_TEXT,
    SERVICE_DIR,
    STORED_SUBDIR,
    ServingSettings,
    load_settings,
    write_config,
)
from lifecycle.serving.source import TUNED_SUFFIX, Served, checked, last_onnx_artifact, resolve
from lifecycle.serving.tuning import measure_settings, pick_best, tune_settings, tuning_grid

__all__ = [
    "CONFIG_ENV", "SAMPLE_TEXT", "SERVICE_DIR", "STORED_SUBDIR", "TUNED_SUFFIX", "LoadResult", "Served", "Server",
    "ServingSettings", "bentoml_command", "build", "checked", "foreground", "json_request",
    "last_onnx_artifact", "load_settings", "measure_settings", "pick_best", "resolve", "run_load", "serve",
    "service_command", "tune_settings", "tuning_grid", "write_config",
]
