"""Run reports: report.json (the contract other tools read), report.md, junit.xml (one testcase per
gate, so CI shows gates natively) and PNG plots. Everything is rebuilt from the artifacts' manifests."""

from __future__ import annotations

import math
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from lifecycle import workloads
from lifecycle.artifact import write_json

HEADLINE = ("accuracy", "f1_micro", "perplexity", "torch_latency_p50_ms", "ort_latency_p50_ms", "http_latency_p50_ms",
            "size_mb")
def headlines() -> tuple[str, ...]:
    return tuple(t.scores[0] for t in workloads.tasks())  # each task's headline score


# One column per runtime: PyTorch eager, onnxruntime and HTTP latencies are different quantities.
LATENCY_COLUMNS = ("torch_latency_p50_ms", "ort_latency_p50_ms", "http_latency_p50_ms")


# LIFECYCLE_PLOTS=0: no PNGs (report.json, report.md and junit.xml as always). Drawing them costs ~0.3-0.6 s a
# run: nothing for a person's run, but a CI job that reads only the verdict, or the test suite (~100 runs,
# ~30 s of drawing), can skip it; `lifecycle report RUN_DIR` draws them later from the manifests.
PLOTS_ENV = "LIFECYCLE_PLOTS"


def write(run_dir: Path, pipeline_name: str, outcomes, junit_path: Path | None = None,
          run_state: str = "finished") -> dict:
    data = as_json(pipeline_name, outcomes, run_state)
    write_json(run_dir / "report.json", data)
    if os.environ.get(PLOTS_ENV, "1") != "0":
        plots(run_dir, outcomes)  # before report.md, which shows the plots it finds
    else:
        shutil.rmtree(run_dir / "plots", ignore_errors=True)  # an earlier run's: they would not match this report
    _atomic_text(run_dir / "report.md", markdown(data, run_dir))
    write_junit(data, junit_path or run_dir / "junit.xml")
    return data


def as_json(pipeline_name: str, outcomes, run_state: str | None = "finished") -> dict:
    """`run_state`: whether the `lifecycle run` that wrote the artifacts finished (else the run fails)."""
    stages = []
    for o in outcomes:
        art = o.artifact
        stages.append({
            "name": o.name,
            "kind": o.kind,
            "status": o.status,
            "artifact": str(art.path) if art else None,
            "metrics": dict(art.metrics) if art else {},
            "gates": [{"metric": g.metric, "bound": g.bound, "value": g.value, "reference": g.reference,
                       "passed": g.passed, "on_fail": g.on_fail, "vs": g.vs, "message": g.message,
                       "verdict": g.verdict or verdict(g.passed, g.on_fail), "interval": g.interval,
                       "p_value": g.p_value, "details": g.details} for g in o.gates],
            "seconds": round(o.seconds, 2),
            "environment": art.manifest.get("environment") if art else None,
            # what the stage says about its own outcome, for people (quantize: why this rung, the attempts)
            "summary": (art.manifest.get("details") or {}).get("summary", []) if art else [],
        })
    passed = run_state == "finished" and all(s["status"] in ("passed", "cached") for s in stages)
    return {"pipeline": pipeline_name, "passed": passed, "run_state": run_state, "stages": stages}


def verdict(passed: bool, on_fail: str) -> str:
    return "pass" if passed else ("fail" if on_fail == "stop" else "warn")


def _stat(g: dict) -> str:
    """A gate's interval and p-value: ' delta 95% CI [-0.012, +0.004] p=0.38' against a release, ' ratio 95% CI
    [0.41, 0.45]' for a relative latency gate timed side by side."""
    iv, p = g.get("interval"), g.get("p_value")
    ratio = "ratio" in (g.get("details") or {})
    out = ""
    if iv:
        out = f" ratio 95% CI [{iv[0]:.3f}, {iv[1]:.3f}]" if ratio else f" delta 95% CI [{iv[0]:+.4f}, {iv[1]:+.4f}]"
    return out + (f" p={p:.3g}" if p is not None else "")


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def markdown(data: dict, run_dir: Path) -> str:
    lines = [f"# Pipeline `{data['pipeline']}`: {'PASSED' if data['passed'] else 'FAILED'}", ""]
    lines += ["| stage | kind | status | " + " | ".join(HEADLINE) + " |", "|" + "---|" * (3 + len(HEADLINE))]
    for s in data["stages"]:
        lines.append(f"| {s['name']} | {s['kind']} | {s['status']} | "
                     + " | ".join(fmt(s["metrics"].get(k)) for k in HEADLINE) + " |")
    for png in ("stages.png", "loss.png", "transfer.png"):
        if (run_dir / "plots" / png).is_file():
            lines += ["", f"![{png}](plots/{png})"]
    for s in data["stages"]:
        lines += ["", f"## {s['name']} ({s['kind']}): {s['status']}", ""]
        if s.get("summary"):
            lines += [*s["summary"], ""]
        if s["gates"]:
            lines += ["| gate | value | reference | interval, p | verdict |", "|---|---|---|---|---|"]
            for g in s["gates"]:
                word = g.get("verdict") or ("pass" if g["passed"] else ("FAIL" if g["on_fail"] == "stop" else "fail (warn)"))
                lines.append(f"| `{g['bound']}` | {fmt(g['value'])} | {fmt(g['reference'])} | "
                             f"{_stat(g).strip() or '-'} | {word} |")
            lines.append("")
        if s["metrics"]:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {fmt(v)} |" for k, v in s["metrics"].items()]
    return "\n".join(lines) + "\n"


def write_junit(data: dict, path: Path) -> None:
    cases = [(s, g) for s in data["stages"] for g in s["gates"]]
    failures = sum(1 for s, g in cases if not g["passed"] and g["on_fail"] == "stop")
    unfinished = data.get("run_state", "finished") != "finished"
    suite = ET.Element("testsuite", name=f"lifecycle.{data['pipeline']}", tests=str(len(cases) + unfinished or 1),
                       failures=str(failures + unfinished), errors="0")
    if unfinished:
        case = ET.SubElement(suite, "testcase", classname=data["pipeline"], name="run finished")
        ET.SubElement(case, "failure", message=f"the last `lifecycle run` did not finish ({data['run_state']})")
    for s, g in cases:
        case = ET.SubElement(suite, "testcase", classname=f"{data['pipeline']}.{s['name']}", name=g["bound"])
        text = f"value={fmt(g['value'])} bound: {g['bound']} reference={fmt(g['reference'])}{_stat(g)}"
        if g.get("verdict"):
            text += f" verdict={g['verdict']}"
        if s.get("summary") and not g["passed"]:  # the stage's own account of the miss (quantize: attempts, attribution)
            text += "\n" + "\n".join(s["summary"])
        if g.get("interval") is not None and g["passed"]:  # a passed comparison still shows its statistics
            ET.SubElement(case, "system-out").text = g["message"] or text
        if not g["passed"]:
            tag = "failure" if g["on_fail"] == "stop" else "system-out"
            message = (g["message"] or text) + (f" ({s['summary'][0]})" if s.get("summary") else "")
            el = ET.SubElement(case, tag, message=message) if tag == "failure" else ET.SubElement(case, tag)
            el.text = text if tag == "failure" else f"warning: {text}"
    if not cases:  # a suite with no gates still says how the run went
        case = ET.SubElement(suite, "testcase", classname=data["pipeline"], name="pipeline completed")
        if not data["passed"]:
            ET.SubElement(case, "failure", message="pipeline did not complete")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    _atomic_text(Path(path), ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def _atomic_text(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def plots(run_dir: Path, outcomes) -> None:
    """loss.png: training curves; stages.png: accuracy, latency and size across stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    curves = [(o.name, o.artifact.manifest.get("details", {}).get("log_history", [])) for o in outcomes if o.artifact]
    curves = [(n, h) for n, h in curves if h]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, hist in curves:
            train = [(r["step"], r["loss"]) for r in hist if "loss" in r]
            evals = [(r["step"], r["eval_loss"]) for r in hist if "eval_loss" in r]
            if train:
                ax.plot(*zip(*train), label=f"{name} train")
            if evals:
                ax.plot(*zip(*evals), marker="o", linestyle="--", label=f"{name} validation")
        ax.set(xlabel="step (per stage)", ylabel="loss", title="Training loss")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=110)
        plt.close(fig)

    points = [pt for o in outcomes if o.artifact for pt in o.artifact.manifest.get("details", {}).get("transfer", [])]
    if points:  # did lower validation perplexity buy better features? (issue: loss is not the goal)
        fig, ax = plt.subplots(figsize=(6, 4))
        for stage in dict.fromkeys(p["stage"] for p in points):
            mine = [p for p in points if p["stage"] == stage]
            ax.plot([p["perplexity"] for p in mine], [p["probe_accuracy"] for p in mine], marker="o", label=stage)
            for p in mine:
                ax.annotate(str(p["step"]), (p["perplexity"], p["probe_accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.invert_xaxis()  # left to right = lower perplexity
        ax.set(xlabel="validation perplexity (log, decreasing)", ylabel="probe accuracy",
               title="Transfer: perplexity vs downstream probe (labels: step)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "transfer.png", dpi=110)
        plt.close(fig)

    stages_plot([(o.name, o.artifact.metrics) for o in outcomes if o.artifact], out / "stages.png")


PANEL_TITLES = {"torch_latency_p50_ms": "PyTorch eager p50 latency (ms)", "ort_latency_p50_ms": "onnxruntime p50 latency (ms)",
                "http_latency_p50_ms": "HTTP p50 latency (ms)", "size_mb": "size (MB)"}


def stages_plot(rows: list[tuple[str, dict]], path: Path) -> None:
    """stages.png: one panel per headline score and latency runtime found in `rows` ((stage, metrics)),
    and size; each score named once (several tasks share `accuracy`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in dict.fromkeys((*headlines(), *LATENCY_COLUMNS, "size_mb")) if any(k in m for _, m in rows)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        names = [n for n, m in rows if key in m]
        vals = [m[key] for n, m in rows if key in m]
        bars = ax.bar(names, vals, color="#4C72B0")
        ax.bar_label(bars, labels=[fmt(v) for v in vals], fontsize=8)
        ax.set_title(PANEL_TITLES.get(key, key.replace("_", " ")))
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(outcomes) -> str:
    """The short table printed at the end of a run: accuracy, latency and size per stage."""
    return summary_table_of(as_json("", outcomes))


def summary_table_of(data: dict) -> str:
    """The same table from a report.json (the README's quickstart table is rendered from a stored one)."""
    latency = [k for k in LATENCY_COLUMNS if any(k in s["metrics"] for s in data["stages"])]
    # the column is named for the task's headline score (accuracy, r2...)
    headline = next((k for s in data["stages"] for k in headlines() if k in s["metrics"]), "accuracy")
    head = ["stage", "status", headline, *latency, "size_mb", "gates"]
    rows = []
    for s in data["stages"]:
        m = s["metrics"]
        ok = sum(g["passed"] for g in s["gates"])
        score = next((m[k] for k in headlines() if k in m), None)
        rows.append([s["name"], s["status"], fmt(score), *(fmt(m.get(k)) for k in latency), fmt(m.get("size_mb")),
                     f"{ok}/{len(s['gates'])}"])
    return table(head, rows)


def stage_table(name: str, metrics: dict, results) -> str:
    rows = [[k, fmt(v)] for k, v in metrics.items()]
    rows += [[f"gate {r.bound}", f"{fmt(r.value)}  {'pass' if r.passed else ('FAIL' if r.on_fail == 'stop' else 'warn')}"]
             for r in results]
    return table([f"{name}", "value"], rows)


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])
