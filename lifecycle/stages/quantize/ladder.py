"""The quantize stage's ladder: building and judging each rung against the fp32 parent on validation (its
scores, latency, size and speed, with static int8's selective fallback), and the reasons a report gives
for the rung kept (every attempt side by side, how far each gate missed, keep-best when none passes).
`cfg` is the stage's Config (its package's __init__); the stage runs the ladder and scores test once."""

from __future__ import annotations

from pathlib import Path

from lifecycle import workloads
from lifecycle.components.quantization import Rung, Settings
from lifecycle.tasks import Scoring

SPEED_METRICS = ("speedup", "speedup_served")  # fp32 p50 / rung p50, at batch 1 and at served_batch


class Ladder:
    """Builds and judges rungs against the fp32 parent, on validation."""

    def __init__(self, cfg, src: Path, ctx):
        from lifecycle.edge import Predictor

        self.cfg, self.src, self.ctx = cfg, src, ctx
        self.task = workloads.task(ctx.pipeline.task.type)
        self.score = self.task.scores[0]
        self.data = ctx.task_data()
        self.splits = self.data.splits
        self.fp32 = Predictor.open(src, threads=cfg.latency.threads)
        # Rungs are judged on validation and test is scored once, on the rung kept: choosing by test
        # scores would make the reported test score the best of several looks at it.
        self.reference = self.task.outputs(self.fp32, self.task.inputs(self.splits["validation"]))
        self.work = ctx.scratch_dir / "work"

    def calibration(self, settings: Settings) -> tuple[list[str], list[dict]]:
        from lifecycle.components.quantization import calibration_inputs, calibration_texts

        c = settings.calibration
        texts = calibration_texts(self.task.inputs(self.splits[c.split]), c.samples, self.ctx.seed)
        return texts, calibration_inputs(self.fp32, texts, c.method)

    def build(self, settings: Settings, out: Path, exclude_nodes: list[str] | None = None) -> None:
        from lifecycle.components.quantization import build

        feeds = self.calibration(settings)[1] if settings.method == "static-int8" else None
        build(settings, self.src, out, feeds, work=self.work, exclude_nodes=exclude_nodes)

    def scores(self, rung_dir: Path) -> dict:
        from lifecycle.edge import Predictor

        predictor = Predictor.open(rung_dir, threads=self.cfg.latency.threads)
        return self.task.score(predictor, Scoring(self.ctx.pipeline, self.data, "validation", self.reference))[0]

    def measure(self, rung_dir: Path, method: str) -> tuple[dict, dict]:
        """Latency and size (onnx_latency), and speed against the fp32 parent: (metrics, speed details)."""
        from lifecycle.components.onnx import onnx_latency
        from lifecycle.components.quantization import speedup
        from lifecycle.edge import Predictor

        cfg, text = self.cfg, self.task.inputs(self.splits["test"])[0]
        predictor = Predictor.open(rung_dir, threads=cfg.latency.threads)
        max_length = self.ctx.pipeline.task.max_length
        metrics = onnx_latency(predictor, text, cfg.latency, max_length)
        if not cfg.measures_speed:
            return metrics, {}
        batches = {"speedup": 1, "speedup_served": cfg.served_batch}
        if method == "none":  # the parent itself: timing it against itself would only measure noise
            speed = {name: {"speedup": 1.0, "interval": [1.0, 1.0], "batch_size": b, "note": "the fp32 parent itself"}
                     for name, b in batches.items()}
        else:
            seq, runs = cfg.latency.seq_len or max_length, cfg.latency.runs
            speed = {name: speedup(predictor, self.fp32, text, b, seq, max(3, runs // 2) if b == 1 else max(2, runs // 8),
                                   cfg.min_speedup) for name, b in batches.items()}
        for name, s in speed.items():
            metrics.update({name: s["speedup"], f"{name}_ci_low": s["interval"][0], f"{name}_ci_high": s["interval"][1]})
        metrics["served_batch_size"] = cfg.served_batch
        return metrics, speed

    def attempt(self, rung: Rung) -> tuple[dict, tuple[Path, dict] | None]:
        """Build, evaluate and gate one rung (with selective fallback for static int8); returns its record
        and, when it could be evaluated, (its directory, its validation metrics)."""
        from lifecycle import gates as gatelib

        settings, rung_dir = self.cfg.settings(rung), self.ctx.scratch_dir / rung.label
        record = {"rung": rung.label, "method": rung.method, "settings": settings.model_dump(mode="json")}
        try:
            self.build(settings, rung_dir)
            metrics = self.scores(rung_dir)
            extra, speed = self.measure(rung_dir, rung.method)
            metrics.update(extra)
        except Exception as exc:  # a rung that cannot be built or run is a failed attempt, not a crash
            self.ctx.echo(f"   rung {rung.label}: failed ({type(exc).__name__}: {exc})")
            return {**record, "error": f"{type(exc).__name__}: {exc}", "passed": False}, None
        results = self.ctx.check_gates(metrics, split="validation")
        record.update(split="validation", metrics=metrics, speed=speed, gates=[r.to_dict() for r in results],
                      passed=not gatelib.blocking(results), misses=misses(self.cfg, results))
        if not record["passed"] and rung.method == "static-int8" and self.cfg.selective_fallback.trials \
                and any(m["metric"] in self.task.split_scores for m in record["misses"]):
            try:
                record["selective_fallback"], found = self.selective_fallback(rung, settings, rung_dir)
            except Exception as exc:  # the scan or a trial failed: the rung stays as measured, with the error
                record["selective_fallback"], found = {"error": f"{type(exc).__name__}: {exc}", "table": []}, None
                self.ctx.echo(f"   {rung.label}: selective fallback failed ({type(exc).__name__}: {exc})")
            if found is not None:
                rung_dir, metrics, trial = found
                record["whole_graph"] = {"metrics": record["metrics"], "misses": record["misses"]}
                record.update(metrics=metrics, passed=True, misses=[], speed=trial.get("speed", {}),
                              gates=trial["gates"], excluded_nodes=record["selective_fallback"]["kept"])
        m = record["metrics"]
        self.ctx.echo(f"   rung {rung.label}: validation {self.score} {m[self.score]:.4f}, p50 {m['ort_latency_p50_ms']:.2f} ms"
                      + (f", speedup {m['speedup']:.2f}x" if "speedup" in m else "")
                      + f", {m['size_mb']:.2f} MB: {'passes' if record['passed'] else 'misses'} the gates")
        return record, (rung_dir, record["metrics"])

    def selective_fallback(self, rung: Rung, settings: Settings, rung_dir: Path) -> tuple[dict, tuple | None]:
        """Rank the static graph's nodes by quantization error, then leave the worst in float until the
        gates on scores pass (greedy, within the trial budget); a trial that passes them is measured in
        full and judged on every gate. Returns the record (ranking, steps, attribution table) and, for a
        trial that passes, (its directory, its metrics, its step)."""
        from lifecycle import gates as gatelib
        from lifecycle.components.sensitivity import attribution_lines, greedy, node_errors

        sel = self.cfg.selective_fallback
        texts = self.calibration(settings)[0][: sel.samples]
        feeds = [self.fp32.encode([t]) for t in texts]  # unpadded: errors on real tokens only
        ranking = node_errors(self.work / "preprocessed.onnx", rung_dir / "model.onnx", feeds, self.work / "sensitivity")
        dirs, full = {}, {}

        def trial(excluded: list[str]) -> dict:
            out = self.ctx.scratch_dir / f"{rung.label}-without-{len(excluded)}"
            self.build(settings, out, exclude_nodes=excluded)
            metrics = self.scores(out)
            on_scores = [r for r in self.ctx.check_gates(metrics, split="validation") if r.metric in metrics]
            scores_passed = passed = not gatelib.blocking(on_scores)
            if scores_passed:  # latency, size and speed only for a trial whose scores pass
                extra, speed = self.measure(out, rung.method)
                metrics.update(extra)
                results = self.ctx.check_gates(metrics, split="validation")
                passed = not gatelib.blocking(results)
                full[len(excluded)] = {"gates": [r.to_dict() for r in results], "speed": speed}
            dirs[len(excluded)] = out
            self.ctx.echo(f"   {rung.label} without the {len(excluded)} worst node(s): validation {self.score} "
                          f"{metrics[self.score]:.4f}: {'passes' if passed else 'misses'}"
                          + (" (scores pass)" if scores_passed and not passed else ""))
            return {"metrics": metrics, "passed": passed, "scores_passed": scores_passed}

        steps = greedy(ranking, trial, sel.trials)
        for s in steps:
            s.update(full.get(len(s["excluded"]), {}))
        kept = next((s for s in steps if s["passed"]), None)
        fixed = next((s for s in steps if s["scores_passed"]), None)
        record = {"ranking": ranking[: max(sel.top, len(steps[-1]["excluded"]) if steps else 0)], "steps": steps,
                  "kept": kept["excluded"] if kept else None,
                  # the nodes whose float fallback made the scores pass, even when another gate then missed
                  "scores_fixed_by": fixed["excluded"] if fixed else None,
                  "table": attribution_lines(ranking, steps, self.score, sel.top)}
        return record, ((dirs[len(kept["excluded"])], kept["metrics"], kept) if kept else None)


# ------------------------------------------------------------------------------ reasons and keep-best
def misses(cfg, results) -> list[dict]:
    """Each blocking gate a candidate missed, and by how much (in the metric's unit, and relative to the
    bound) — what 'closest' is judged on."""
    from lifecycle import gates as gatelib

    gates = [g for g in cfg.gates if g.release is None]  # the ladder's check skips release gates
    out = []
    for gate, r in zip(gates, results):
        if r.passed or r.on_fail != "stop":
            continue
        ref, t = r.reference, gate.threshold
        target = {"min": t, "max": t, "max_drop": None if ref is None else ref - t,
                  "min_gain": None if ref is None else ref + t, "max_ratio": None if ref is None else ref * t,
                  "min_ratio": None if ref is None else ref * t}[gate.kind]
        finite = gatelib._finite(r.value) and target is not None
        by = ((r.value - target) if gate.kind in ("max", "max_ratio") else (target - r.value)) if finite else None
        out.append({"metric": r.metric, "value": r.value, "bound": r.bound, "missed_by": by,
                    "relative": by / max(abs(target), 1e-12) if finite else None})  # None: not measurable
    return out


def closeness(attempt: dict) -> tuple[int, float]:
    """Fewer missed gates first, then the smaller summed relative shortfall (an unmeasurable miss counts
    as infinitely far)."""
    found = attempt.get("misses", [])
    return len(found), sum(float("inf") if m["relative"] is None else m["relative"] for m in found)


def explain(cfg, attempts: list[dict], kept: dict, score: str) -> dict:
    """details.reason (one line), details.summary (lines for report.md and the junit messages: every
    attempt side by side, the attribution table) and, when nothing passed, details.closest."""
    from lifecycle.components.quantization import speed_words
    from lifecycle.environment import cpu_model, isa_flags
    from lifecycle.report import fmt

    cpu = f"{cpu_model()} ({' '.join(isa_flags()) or 'no ISA flags read'})"

    def why(a: dict) -> str:
        if "error" in a:
            return a["error"]
        parts = []
        for m in a["misses"]:
            speed = a.get("speed", {}).get(m["metric"])
            words = f": {speed_words(a['method'], speed)} on this CPU" if speed else ""
            parts.append(f"{m['metric']} {fmt(m['value'])} missed `{m['bound']}` by {fmt(m['missed_by'])}{words}")
        return "; ".join(parts) + within_noise(a)

    def within_noise(a: dict) -> str:
        """The speed gates whose interval straddled min_speedup, and what `when_inconclusive` made of it."""
        if cfg.min_speedup is None or "error" in a:
            return ""
        m, t = a["metrics"], cfg.min_speedup
        found = [f"{name} {fmt(m[name])} (95% interval {fmt(m[f'{name}_ci_low'])}-{fmt(m[f'{name}_ci_high'])})"
                 for name in SPEED_METRICS if name in m and m[f"{name}_ci_low"] < t <= m[f"{name}_ci_high"]]
        verdict = {"smaller": "passes as the smaller graph", "faster": "decided on the point estimate",
                   "parent": "misses: the parent is preferred"}[cfg.when_inconclusive]
        return (f" [{'; '.join(found)} within noise of {t:g}x fp32: {verdict} "
                f"(when_inconclusive: {cfg.when_inconclusive})]") if found else ""

    earlier = [a for a in attempts if a is not kept]
    if kept["passed"]:
        reason = f"kept {kept['rung']}: the first rung that passes every gate{within_noise(kept)}"
        if kept["method"] == "none" and earlier:
            reason = "kept none (the fp32 parent): " + "; ".join(f"{a['rung']} {why(a)}" for a in earlier)
        elif earlier:
            reason += " (" + "; ".join(f"{a['rung']}: {why(a)}" for a in earlier) + ")"
    else:
        reason = f"no rung passes every gate; the closest is {kept['rung']}: {why(kept)}"
    lines = [reason, f"CPU: {cpu}", "",
             f"| rung | validation {score} | p50 ms | b32 p50 ms | speedup b1 | speedup served | size MB | gates |",
             "|---|---|---|---|---|---|---|---|"]
    for a in attempts:
        m = a.get("metrics", {})
        lines.append(f"| {a['rung']} | " + " | ".join(fmt(m.get(k)) for k in (
            score, "ort_latency_p50_ms", "ort_latency_b32_p50_ms", "speedup", "speedup_served", "size_mb"))
            + f" | {'pass' if a['passed'] else ('error' if 'error' in a else 'miss')} |")
    for a in attempts:
        if a.get("selective_fallback"):
            lines += ["", f"Per-node sensitivity of {a['rung']} (worst first) and selective fallback:", "",
                      *a["selective_fallback"]["table"]]
    out = {"reason": reason, "summary": lines, "gated_on": {"cpu": cpu_model(), "isa": isa_flags()}}
    if not kept["passed"]:
        out["closest"] = {"rung": kept["rung"], "misses": kept.get("misses", [])}
    return out
