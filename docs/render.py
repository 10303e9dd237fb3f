"""Render the README's measured sections from stored results, so no figure in it is typed by hand.

    python docs/render.py --run runs/quickstart   # store that run's report.json + figure, then render
    python docs/render.py                         # render from what is stored

Sources: docs/quickstart/report.json (a finished `make quickstart`, copied here by --run; docs/quickstart/stages.png
is drawn from it),
benchmarks/results/serving.json (`python benchmarks/serving.py`), benchmarks/results/reliability.json
(`python benchmarks/reliability.py`), benchmarks/results/quantize.json (`python benchmarks/quantize.py`)
and, for the table of every benchmark's checks, all of benchmarks/results/*.json. Each section sits between
`<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in README.md; everything else is left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart"
RESULTS = ROOT / "benchmarks" / "results"
SERVING = RESULTS / "serving.json"
RELIABILITY = RESULTS / "reliability.json"
QUANTIZE = RESULTS / "quantize.json"
AUDIO = ("audio_pipeline", "audio", "audio_latency")  # benchmarks/audio.py pipeline, training, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished quickstart run directory to store first")
    args = parser.parse_args(argv)
    if args.run is not None:
        store(args.run)
    from lifecycle.report import stages_plot

    report = json.loads((QUICKSTART / "report.json").read_text())
    stages_plot([(s["name"], s["metrics"]) for s in report["stages"]], QUICKSTART / "stages.png")
    readme = ROOT / "README.md"
    text = render(readme.read_text())
    readme.write_text(text)
    print(f"rendered {readme.relative_to(ROOT)} from {QUICKSTART.relative_to(ROOT)}/report.json and "
          f"{RESULTS.relative_to(ROOT)}/*.json")
    return 0


def render(text: str) -> str:
    """README.md's text with every generated section rendered from what is stored."""
    text = replace(text, "quickstart", quickstart_section(json.loads((QUICKSTART / "report.json").read_text())))
    if SERVING.is_file():
        text = replace(text, "serving", serving_section(json.loads(SERVING.read_text())))
    if RELIABILITY.is_file():
        text = replace(text, "reliability", reliability_section(json.loads(RELIABILITY.read_text())))
    if QUANTIZE.is_file():
        text = replace(text, "quantization", quantization_section(json.loads(QUANTIZE.read_text())))
    if all((RESULTS / f"{name}.json").is_file() for name in AUDIO):
        text = replace(text, "audio", audio_section(*(json.loads((RESULTS / f"{n}.json").read_text()) for n in AUDIO)))
    return replace(text, "benchmarks", benchmarks_section(sorted(RESULTS.glob("*.json"))))


def store(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    if not report["passed"]:
        sys.exit(f"{run_dir}: the run did not pass its gates; the README shows a passing quickstart")
    for stage in report["stages"]:  # paths on the machine that ran it mean nothing in the repository
        stage["artifact"] = stage["artifact"] and Path(stage["artifact"]).name
    record = json.loads((run_dir / "pipeline.json").read_text())
    report["recorded"] = {"deterministic": record["pipeline"].get("deterministic", False),
                          "seed": record["pipeline"].get("seed", 0), "state": record.get("state")}
    QUICKSTART.mkdir(parents=True, exist_ok=True)
    (QUICKSTART / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
    if not pattern.search(text):
        sys.exit(f"README.md has no <!-- generated:{name} --> ... <!-- /generated:{name} --> section")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


# How each stage's latency was timed: one runtime per stage, so one column, labelled per row.
TIMED_AS = {"torch_latency_p50_ms": "PyTorch eager", "ort_latency_p50_ms": "onnxruntime", "http_latency_p50_ms": "HTTP round trip"}


def headline(metrics: dict) -> tuple[str, float] | None:
    """The stage's headline score, by name: perplexity for the language-model stages, else the task's."""
    from lifecycle.report import headlines

    return next(((k, metrics[k]) for k in ("perplexity", *headlines()) if k in metrics), None)


def quickstart_section(report: dict) -> str:
    stages = {s["name"]: s for s in report["stages"]}
    seconds = sum(s.get("seconds", 0) for s in report["stages"])
    rec = report.get("recorded", {})
    rows = []
    for s in report["stages"]:
        m, score = s["metrics"], headline(s["metrics"])
        timed = next((k for k in TIMED_AS if k in m), None)
        cells = [s["name"], s["status"], f"{score[0]} {score[1]:.4g}" if score else "-",
                 f"{m[timed]:.3f}" if timed else "-", TIMED_AS.get(timed, "-"),
                 f"{m['size_mb']:.2f}" if "size_mb" in m else "-", f"{sum(g['passed'] for g in s['gates'])}/{len(s['gates'])}"]
        rows.append("| " + " | ".join(cells) + " |")
    shape = next((s["metrics"] for s in report["stages"] if "latency_seq_len" in s["metrics"]), {})
    lines = [f"On this project's 2-core machine ({seconds / 60:.0f} minutes of stage time, seed {rec.get('seed', 0)}, "
             f"`deterministic: {str(rec.get('deterministic', False)).lower()}`; "
             "`docs/quickstart/report.json`):", "",
             "| stage | status | headline score | p50 latency ms | timed as | size MB | gates passed |",
             "|---|---|---|---|---|---|---|", *rows, ""]
    q = stages.get("quantize", {}).get("metrics", {})
    lines.append(f"Each stage times its own model alone (batch {shape.get('latency_batch_size', 1)}, "
                 f"{shape.get('latency_seq_len', '?')} tokens, {shape.get('latency_threads', '?')} threads; the serve "
                 "stage one request over HTTP), at a different moment of the run, so one stage's figure over another's "
                 "is not a speedup."
                 + (f" The quantize stage's speed gates time its int8 graph against its fp32 parent interleaved, in one "
                    f"process: {q['speedup']:.2f}x faster at batch 1 and {q['speedup_served']:.2f}x at batch "
                    f"{q.get('served_batch_size', 32)} (`speedup`, `speedup_served`)." if "speedup" in q else ""))
    lines.append("")
    ft = stages.get("finetune", {}).get("metrics", {})
    if "control_accuracy" in ft:
        gain = ft.get("pretraining_gain", ft["accuracy"] - ft["control_accuracy"])
        lines.append(f"On the same test articles, the from-scratch control scores {ft['control_accuracy']:.4f} "
                     f"(`pretraining_gain` {gain:+.3f}: {'the pre-training paid for itself' if gain > 0 else 'the pre-training did not pay for itself'}) "
                     f"and a TF-IDF + logistic-regression baseline {ft.get('baseline_tfidf_accuracy', float('nan')):.4f}.")
        lines.append("")
    return "\n".join(lines) + "\n"


def serving_section(data: dict) -> str:
    rows = []
    for name, r in data["results"].items():
        measured = r.get("tuned_wrk") or r["tuned"]  # wrk's figures when wrk ran, else run_load's
        generator = measured.get("load_generator") or ("wrk" if r.get("tuned_wrk") else "not recorded")
        generator = generator.split(" (")[0]  # "lifecycle.serving.run_load (asyncio ...)": the name
        s = r["tuned"]["settings"]
        setting = f"{s['workers']} {'batched' if s['batching'] else 'unbatched'} worker(s) x {s['ort_threads']} thread(s)"
        rows.append(f"| {name} | {setting} | {measured['requests_per_s']:.0f} | {measured['http_latency_p95_ms']:.1f} | "
                    f"{measured['error_count']} | {generator} |")
    checks = data.get("checks", [])
    failed = [c["name"] for c in checks if not c["passed"]]
    small = data["results"].get("small")
    cost = ([f"Server CPU per request for the small model at 8 clients: {small['default_settings']['server_cpu_ms_per_request']:.2f} ms "
             f"with the service's default settings, {small['tuned']['server_cpu_ms_per_request']:.2f} ms tuned, around "
             f"{small['in_process']['cpu_ms_per_call']:.2f} ms of CPU for the inference itself in-process (batch-1 p50 "
             f"{small['in_process']['batch1_p50_ms']:.2f} ms).", ""] if small else [])
    return "\n".join([
        f"`benchmarks/results/serving.json` ({'quick' if data.get('quick') else 'full'} run, load average "
        f"{_load(data['loadavg_before']):.1f} before / {_load(data['loadavg_after']):.1f} after, 8 keep-alive clients):", "",
        "| model | tuned settings | req/s | p95 ms | errors | load generator |", "|---|---|---|---|---|---|", *rows, "",
        *cost,
        f"Checks: {len(checks) - len(failed)} of {len(checks)} pass" + (f" (missed: {', '.join(failed)})." if failed else "."),
    ]) + "\n"


def _interval(found: dict, key: str = "accuracy") -> str:
    return (f"{found[key]:.3f} [{found[f'{key}_ci_low']:.3f}, {found[f'{key}_ci_high']:.3f}]"
            f" ({found.get('scored_clips', found.get('clips', '?'))} clips)")


def audio_section(whole: dict, training: dict, latency: dict) -> str:
    stages, t = whole["results"]["stages"], training["results"]
    q, ft = stages["quantize"], stages["finetune"]["metrics"]
    speakers, adapt, synth, obj = t["new_speakers"], t["adaptation"], t["synthetic_only"], t["objective"]
    diff, gain = speakers["model_minus_mfcc"], adapt["real_with_minus_without"]
    at = next(r for r in latency["results"]["rows"] if r["seconds"] == 1.3)
    env = latency.get("environment", {})
    rows = [f"| {name} | {_interval(found)} |" for name, found in whole["results"]["int8_also_test"].items()]
    return "\n".join([
        f"`pipelines/speech_digits.yaml` in {whole['results']['seconds'] / 60:.1f} minutes on 2 cores "
        f"(`benchmarks/results/audio_pipeline.json`, every gate {'passed' if whole['checks'][0]['passed'] else 'NOT passed'}): "
        f"int8 accuracy {q['metrics'].get('accuracy', float('nan')):.4f} on FSDD's official test takes (the fp32 finetune "
        f"{ft.get('accuracy', float('nan')):.4f}, its from-scratch control {ft.get('control_accuracy', float('nan')):.4f}, "
        f"MFCCs + logistic regression {ft.get('baseline_mfcc_accuracy', float('nan')):.4f}). The int8 model on the other "
        "test sets (bootstrap 95% interval; real/ scores its 23 digit clips):", "",
        "| test set | int8 accuracy |", "|---|---|", *rows, "",
        f"**New speakers** (`benchmarks/results/audio.json`: {' and '.join(speakers['held_out'])} held out of training "
        f"entirely, all their clips tested): the model {speakers['accuracy']:.4f}, MFCCs + logistic regression "
        f"{speakers['baseline_mfcc_accuracy']:.4f} on the same clips, difference {diff['difference']:+.4f} "
        f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] (paired bootstrap, {diff['clips']} clips). Pre-training: "
        f"`pretraining_gain` {obj['pretraining_gain']:+.4f} on the official split (control {obj['control_accuracy']:.4f}). "
        f"Adaptation on real_unlabeled/: real/ {_interval(adapt['real_without_adapt'])} without, "
        f"{_interval(adapt['real_with_adapt'])} with (difference {gain['difference']:+.4f} "
        f"[{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]). Trained on espeak-ng voices only: every FSDD recording "
        f"{_interval(synth['fsdd_official_test'])} (MFCCs trained the same way "
        f"{synth['fsdd_official_test']['baseline_mfcc_accuracy']:.3f}), real/ {_interval(synth['real'])}.", "",
        f"Latency at the pipeline's 64 frames (a 1.3 s clip's), batch 1 (`benchmarks/results/audio_latency.json`, "
        f"{env.get('cpu', 'CPU')}, {'/'.join(env.get('isa', []))}): features {at['b1']['features_ms']:.2f} ms, PyTorch eager "
        f"{at['b1']['eager_ms']:.2f} ms, ONNX fp32 {at['b1']['ort_fp32_ms']:.2f} ms, int8 {at['b1']['ort_int8_ms']:.2f} ms; "
        "by clip length in `benchmarks/results/audio_latency.png`.",
    ]) + "\n"


def _load(value) -> float:
    """The 1-minute load average: results written before benchmarks/common.Recorder kept all three."""
    return value[0] if isinstance(value, list) else value


def reliability_section(data: dict) -> str:
    r = data["results"]
    c, s, k = r["config_cases"], r["server_cases"], r["kill_loop"]
    others = r["other_tests"]
    failed = [x["name"] for x in data["checks"] if not x["passed"]]
    return "\n".join([
        f"Measured by `benchmarks/results/reliability.json` (one run of the hardening tests, load average "
        f"{_load(data['loadavg_before']):.1f} before / {_load(data['loadavg_after']):.1f} after):", "",
        f"- config and data cases: {c['as_expected_and_nothing_left']} of {c['tried']} answered with the expected exit code "
        "and one-line message, leaving nothing behind;",
        f"- server cases: {s['as_expected']} of {s['tried']} answered as expected within their time, server live after "
        f"{s['live_after_each']} of {s['tried']};",
        f"- kill -9 of a training run: {k.get('kills', 0)} kills, {k.get('finished', 0)} finished runs "
        f"({k.get('resumed', 0)} resumed), each with the metrics of the uninterrupted run;",
        f"- other hardening tests: {sum(v == 'passed' for v in others.values())} of {len(others)} pass"
        + (" (" + ", ".join(f"`{stem}` {n['passed']}/{n['tried']}" for stem, n in r["other_tests_by_file"].items())
           + ")" if r.get("other_tests_by_file") else "") + ".", "",
        f"Checks: {len(data['checks']) - len(failed)} of {len(data['checks'])} pass"
        + (f" (missed: {', '.join(failed)})." if failed else "."),
    ]) + "\n"


# onnxruntime op types by what they do, for the op profiles (anything else: "other")
OP_ROLES = {
    "matrix products": {"MatMul", "Gemm", "FusedGemm", "QGemm", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
                        "MatMulIntegerToFloat", "MatMulNBits"},
    "fused attention": {"Attention", "QAttention", "MultiHeadAttention"},
    "quantize / dequantize": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
}
PROFILED = {"lifecycle_fp32": "fp32 (lifecycle export)", "dynamic_int8": "dynamic int8", "static_int8": "static int8",
            "optimum_int8": "optimum int8 (default: unfused)", "optimum_anchor_int8": "optimum {level} + dynamic int8"}  # {level}: the anchor's level, recorded


def quantization_section(data: dict) -> str:
    """Where a batch-1 call's time goes in each graph (onnxruntime's profiler, grouped by OP_ROLES), the
    int8 speedup's measured ceiling, and static int8's attribution table, from benchmarks/results/quantize.json."""
    r, env = data["results"], data.get("environment", {})
    profiles = r["op_profiles_b1"]
    head = (f"`benchmarks/results/quantize.json` ({'quick' if data.get('quick') else 'full'} run, {env.get('cpu', 'CPU not recorded')}, "
            f"{r['threads']} threads, batch 1, {r['seq_len']} tokens"
            + ("" if data.get("valid", True) else f"; **marked invalid**: {', '.join(data['invalid_because'])}") + "):")
    rows, level = [], r.get("optimum", {}).get("anchor_optimization_level", "O3")
    for name, label in PROFILED.items():
        if name not in profiles:
            continue
        ops, total = profiles[name]["ops"], profiles[name]["kernel_ms_per_call"]
        by_role = {role: sum(v["ms"] for op, v in ops.items() if op in kinds) for role, kinds in OP_ROLES.items()}
        cells = " | ".join(f"{by_role[role]:.2f}" for role in OP_ROLES)
        rows.append(f"| {label.format(level=level)} | {total:.2f} | {cells} | {total - sum(by_role.values()):.2f} |")
    lines = [head, "", "| graph | kernel ms per call | " + " | ".join(OP_ROLES) + " | other |",
             "|---" * (len(OP_ROLES) + 3) + "|", *rows, "",
             "Each graph is profiled in turn, after the interleaved timings (so compare shares within a row "
             "more than totals across rows). Fused attention includes its Q/K/V projection (int8 in dynamic "
             "int8's QAttention, fp32 in the Attention that static QDQ graphs keep); optimum's default graph "
             "is not fused, so its attention is counted under matrix products and other."]
    ceiling = r.get("int8_gemm_ceiling")
    if ceiling and "series" not in ceiling:  # recorded before the ceiling shared the speedup's series
        lines += ["", "This result's int8 speedup ceiling divided a second eager timing, not the speedup's own: "
                      "no ceiling is stated from it (re-record with `python benchmarks/quantize.py`)."]
    elif ceiling:
        speedup, bound = (next(c for c in data["checks"] if c["name"].startswith(prefix))
                          for prefix in ("int8 speedup vs PyTorch fp32 eager", "its ceiling on this CPU"))
        said = ("the measured speedup exceeds it, so it bounds nothing here" if bound.get("status") == "vacuous" else
                "so the target is not ruled out on this CPU" if bound["passed"] else
                "so no graph of these weights on onnxruntime's int8 kernels reaches the target: it is out of reach "
                "on this CPU")
        lines += ["", f"The int8 graph's matrix products alone, each timed as one onnxruntime DynamicQuantizeMatMul in "
                      f"the same alternating rounds as PyTorch eager and the int8 graph, take "
                      f"{ceiling['int8_gemm_floor_ms']:.1f} ms per call against eager's {ceiling['eager_b1_p50_ms']:.1f} ms: "
                      f"with everything else free, a ceiling of {ceiling['speedup_ceiling']:.2f}x on the speedup "
                      f"(measured on the same baseline: {speedup['value']:.2f}x; target {speedup['target']}); {said}."]
    rung = r.get("static_int8_rebuilt", {}).get("rung", "static-int8")
    for sel in r.get("sensitivity", []):
        table = [line for line in sel["table"] if line.startswith("|")]
        trials = [f"- {line}" for line in sel["table"] if not line.startswith("|")]
        lines += ["", f"Static int8's per-node sensitivity ({rung}, validation) and "
                      "selective fallback:", "", *table, "", *trials]
    return "\n".join(lines) + "\n"


def benchmarks_section(paths: list[Path]) -> str:
    """One row per check of every stored result, failed ones included: what each benchmark claims,
    against what, under which load, and whether it held."""
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        env = data.get("environment", {})
        commit = (env.get("git_commit") or "")[:7]
        recorded = (f"{'quick' if data.get('quick') else 'full'}, load {_load(data['loadavg_before']):.2f}"
                    + (f", `{commit}`" if commit else "") + (f", {env['cpu']}" if env.get("cpu") else ""))
        validity = "" if data.get("valid", True) else " **(marked invalid)**"
        for i, c in enumerate(data["checks"]):
            first = f"[{path.stem}](benchmarks/{path.stem}.py){validity} | {recorded}" if i == 0 else " | "
            name = c["name"].replace("|", "\\|")  # |x - y| in a name would end the cell
            verdict = "vacuous" if c.get("status") == "vacuous" else ("pass" if c["passed"] else "miss")  # vacuous: its premise failed
            rows.append(f"| {first} | {name} | {_value(c['value'])} | {c['target']} | "
                        f"{verdict if verdict == 'pass' else f'**{verdict}**'} |")
    return "\n".join(["| benchmark | recorded (budget, 1-min load before, commit, CPU) | check | value | target | |",
                      "|---|---|---|---|---|---|", *rows]) + "\n"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
