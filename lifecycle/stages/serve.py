"""serve: start the BentoML service on the parent ONNX artifact and measure it over HTTP.

The test split goes through a real `bentoml serve` process on 127.0.0.1 (a free port) from `clients`
concurrent keep-alive connections, each text exactly once. Accuracy over HTTP must equal the parent's:
the server runs the same `lifecycle.edge` predictor as the export/quantize stage (one inference path),
so the default gates are `accuracy` with no drop vs the parent (an embedder's headline instead: `knn_accuracy`
of the HTTP embeddings against the in-process ones of the training split), zero errors, and every answer equal to
the same text's answer run in-process (`prediction_mismatches`): every class score within
`score_tolerance`, and the same label unless the in-process top two scores are within
`score_tolerance` of each other (a tie that rounding may break either way). `lifecycle.edge` makes a
text's answer independent of what it is batched with, so the two agree to the bit on one machine; the
tolerance only absorbs a different onnxruntime thread count. The artifact holds the serving config
that was used, the measurements (with the tolerance), and the server log.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from lifecycle import workloads
from lifecycle.schema import Gate, Holds, StageBase, TaskType
from lifecycle.serving import ServingSettings

# beside the task's own scores of the HTTP answers
HTTP_METRICS = ("http_latency_p50_ms", "http_latency_p95_ms", "http_latency_p99_ms", "requests_per_s",
                "error_count", "http_accuracy", "prediction_mismatches", "score_max_abs_diff", "answered_fraction")


class Config(StageBase):
    """The `serve` stage: the parent ONNX model behind a real BentoML server, measured over HTTP (`lc.Serve`)."""

    kind: Literal["serve"] = "serve"  # YAML must name it; in Python the class does
    clients: int = Field(8, ge=1, description="concurrent keep-alive connections")
    texts_per_request: int = Field(1, ge=1)  # 1: latency per text, as a user calling the API sees it
    warmup_requests: int = Field(16, ge=0)  # not measured
    serving: ServingSettings = ServingSettings()  # the settings the service runs with (and is measured at)
    startup_timeout_s: float = Field(120.0, gt=0)
    # How far an HTTP answer's scores may be from the in-process answer for the same text.
    score_tolerance: float = Field(1e-5, ge=0)

    def served(self) -> tuple[str, ...]:
        # the tasks whose HTTP answers it can score against the test split (labels, values, kNN, tokens)
        return tuple(t.name for t in workloads.tasks() if t.scores_answers)

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return (workloads.task(task).artifacts.onnx_holds,)

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        return "service-check"

    def task_hint(self, task: TaskType) -> str | None:
        return (f"the serve stage scores HTTP answers against the test labels; serve this model with "
                f"`lifecycle serve RUN_DIR` (POST {workloads.task(task).edge.route}) instead")

    def metric_names(self, task: TaskType | None = None) -> set[str]:
        return {*HTTP_METRICS, *(s for t in ([workloads.task(task)] if task else workloads.tasks()) for s in t.scores)}

    def adopt_task(self, task: TaskType | None) -> None:
        default = Gate(metric="accuracy", max_drop=0.0)
        if task is None or default not in self.gates:
            return
        plugin = workloads.task(task)
        if not plugin.answers.serve_accuracy:  # no labels to score: drop that default
            self.gates = [g for g in self.gates if g != default]
        elif plugin.scores[0] != "accuracy":  # an embedder: its HTTP answers score as well by its kNN headline
            headline = [] if any(g.metric == plugin.scores[0] for g in self.gates) else [
                Gate(metric=plugin.scores[0], max_drop=0.0)]
            self.gates = [*(g for g in self.gates if g != default), *headline]

    def model_post_init(self, _ctx) -> None:
        # One inference path: HTTP accuracy equal to the parent's, and no failed request, unless the
        # user wrote their own gates on these metrics.
        mine = {g.metric for g in self.gates}
        defaults = [Gate(metric="accuracy", max_drop=0.0), Gate(metric="error_count", max=0),
                    Gate(metric="prediction_mismatches", max=0)]
        self.gates = [*self.gates, *(g for g in defaults if g.metric not in mine)]


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    from lifecycle.edge import Predictor
    from lifecycle.serving import Server, json_request, resolve, run_load, write_config
    from lifecycle.tasks import Scoring

    task = workloads.task(ctx.pipeline.task.type)
    served = resolve(parent.path)
    config = write_config(served, cfg.serving, ctx.out_dir / "serving.json")
    test = ctx.task_data().splits["test"]
    texts = list(task.inputs(test))  # texts, or rows for a table model
    n = cfg.texts_per_request
    chunks = [texts[i : i + n] for i in range(0, len(texts), n)]

    with Server(config, log=ctx.out_dir / "server.log", startup_timeout_s=cfg.startup_timeout_s) as server:
        requests = [json_request(server.port, {task.inputs.request_key: task.wire(chunk)}, task.edge.route) for chunk in chunks]
        if cfg.warmup_requests:
            run_load(server.port, requests, cfg.clients, max_requests=cfg.warmup_requests)
        result = run_load(server.port, requests, cfg.clients, max_requests=len(requests), keep_bodies=True)
    summary = result.summary()
    exit_code = server.proc.returncode  # stopped by SIGTERM when the `with` block ended: 0 is a clean stop

    answers: list = [None] * len(texts)  # a failed request leaves None: wrong by construction
    for i, body in result.bodies.items():
        try:
            for j, item in enumerate(json.loads(body)):
                answers[i * n + j] = item
        except (ValueError, TypeError):
            continue
    local = Predictor.open(parent.path)
    metrics = task.served_scores(answers, local, Scoring(ctx.pipeline, ctx.task_data(), "test"))
    metrics.update(one_path_agreement(task, answers, local.answers(texts), cfg.score_tolerance))
    if "accuracy" in metrics:
        metrics["http_accuracy"] = metrics["accuracy"]
    metrics.update({k: summary[k] for k in ("http_latency_p50_ms", "http_latency_p95_ms", "http_latency_p99_ms",
                                            "requests_per_s", "error_count")})
    (ctx.out_dir / "measurements.json").write_text(json.dumps(
        {"clients": cfg.clients, "texts_per_request": n, "texts": len(texts), "port": server.port,
         "server_exit_code": exit_code, "score_tolerance": cfg.score_tolerance, **summary,
         "parent_accuracy": parent.metrics.get("accuracy"), "http_accuracy": metrics.get("http_accuracy")}, indent=2))
    return metrics, {"serving": {"status_counts": summary["status_counts"], "clients": cfg.clients,
                                 "score_tolerance": cfg.score_tolerance}}


def one_path_agreement(task, answers: list, local: list, tolerance: float) -> dict:
    """Each HTTP answer against the same text run in-process (the task says when two answers agree); a
    missing answer is a mismatch. Also the largest difference. Catches answers mixed up between
    requests, which accuracy alone misses when a model predicts mostly one class."""
    mismatches, diffs = 0, []
    for a, b in zip(answers, local):
        if a is None:
            mismatches += 1
            continue
        agree, diff = task.answers_agree(a, b, tolerance)
        diffs.append(diff)
        mismatches += not agree
    return {"prediction_mismatches": mismatches, "score_max_abs_diff": max(diffs, default=float("nan"))}
