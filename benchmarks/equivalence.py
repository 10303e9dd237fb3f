"""Behaviour unchanged, proven: every shipped pipeline run with `deterministic: true` and shrunk budgets,
its non-timing metrics and gate verdicts recorded, so two commits can be compared side by side.

    python benchmarks/equivalence.py record --out before.json      # on the old commit
    python benchmarks/equivalence.py record --out after.json       # on the new one
    python benchmarks/equivalence.py compare before.json after.json [--untimed BEFORE AFTER]  # -> results/equivalence.json

Shrunk budgets: every `train` block (a stage's, a control's) gets `max_steps: STEPS`; what a pipeline
measures after training (evaluation, export, the quantization ladder, serving) runs as shipped. Full
budgets are hours a pipeline on two cores; a refactor that changes a recipe's arithmetic changes the
metrics after 3 steps as surely as after 3,000.

Timing metrics are left out (latency, throughput, wall time, speedups): they differ run to run. A metric
chosen by a timing (a fuse-if-faster export, a quantization rung kept by its speed gate) may differ too;
`compare` names each difference and the table in the closing note says why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (the offline environment)
import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("latency", "wait", "_ms", "seconds", "throughput", "speedup", "per_s", "_s_", "time", "qps", "rps", "mfu",
          "tokens_per", "samples_per")


def timing(metric: str) -> bool:
    return any(t in metric for t in TIMING) or metric.endswith("_s")


def shrink(doc: dict, steps: int, untimed: bool = False) -> list[str]:
    """`doc` made deterministic, every training budget `steps` steps and every gate a warning (a shrunk
    budget fails accuracy gates, and a stop would leave the later stages unrun); with `untimed`, no choice
    made by a timing either (exports keep the plain graph, quantize ladders pick by their gates, not by
    speed). What changed, as a list."""
    doc["deterministic"] = True
    changes = ["deterministic: true", f"every train.max_steps: {steps}", "every gate on_fail: warn"]
    if untimed:
        changes.append("untimed: every export optimize: false, every quantize min_speedup: null")
    for stage in doc.get("stages", []):
        for block in (stage, stage.get("control") if isinstance(stage.get("control"), dict) else {}):
            if "train" in block:
                block["train"]["max_steps"] = steps
        if stage.get("head_warmup_steps"):
            stage["head_warmup_steps"] = steps
        for gate in stage.get("gates", []):
            gate["on_fail"] = "warn"
        if stage["kind"] in ("finetune", "distill"):  # the collapse gate these stages add
            stage["collapse_on_fail"] = "warn"
        if untimed and stage["kind"] == "export":
            stage["optimize"] = False
        if untimed and stage["kind"] == "quantize":
            stage["min_speedup"] = None
    return changes


def record_one(path: Path, steps: int, timeout: int, untimed: bool = False) -> dict:
    doc = yaml.safe_load(path.read_text())
    changes = shrink(doc, steps, untimed)
    # beside the original, so its relative data paths still resolve
    shrunk = path.with_name(f".equivalence-{path.name}")
    shrunk.write_text(yaml.safe_dump(doc, sort_keys=False))
    with tempfile.TemporaryDirectory(prefix="equiv-") as work:
        cmd = [sys.executable, "-m", "lifecycle.cli", "run", str(shrunk), "--workdir", work]
        env = dict(os.environ, LIFECYCLE_PLOTS="0", LIFECYCLE_REGISTRY=str(Path(work) / "registry"))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            rc, tail = None, f"timed out after {timeout} s"
        finally:
            shrunk.unlink()
        seconds = round(time.perf_counter() - t0, 1)
        reports = list(Path(work).glob("*/report.json"))
        stages = []
        if reports:
            for s in json.loads(reports[0].read_text())["stages"]:
                stages.append({
                    "name": s["name"], "status": s["status"],
                    "metrics": {k: v for k, v in sorted(s["metrics"].items()) if not timing(k)},
                    "gates": [{"metric": g["metric"], "verdict": g["verdict"]} for g in s["gates"]
                              if not timing(g["metric"])],
                })
    return {"changes": changes, "exit_code": rc, "seconds": seconds, "stages": stages,
            "tail": tail if rc not in (0, 3) else ""}


def record(args) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else {"commit": commit, "steps": args.steps,
                                                              "machine": platform.processor() or platform.machine(),
                                                              "pipelines": {}}
    files = sorted((ROOT / "pipelines").glob("*.yaml"))
    for path in files:
        if args.only and path.stem not in args.only:
            continue
        if path.stem in done["pipelines"] and not args.again:
            continue
        print(f"{path.stem} ...", flush=True)
        done["pipelines"][path.stem] = result = record_one(path, args.steps, args.timeout, args.untimed)
        print(f"  exit {result['exit_code']} in {result['seconds']} s; {len(result['stages'])} stages", flush=True)
        out.write_text(json.dumps(done, indent=1) + "\n")  # after each pipeline: nothing lost on a crash


def same(a, b) -> bool:
    """Equal, to the last bit: a float read back from JSON is the float written. NaN (a train_loss the
    Trainer did not log) equals NaN."""
    return a == b or (a != a and b != b)


def pairs(before: dict, after: dict) -> list[dict]:
    """Per pipeline: how many metrics and gate verdicts were compared, and every difference."""
    rows = []
    for name, b in sorted(before["pipelines"].items()):
        a = after["pipelines"].get(name)
        if a is None:
            rows.append({"pipeline": name, "identical": False, "differences": ["not run after"]})
            continue
        diffs, compared = [], 0
        if b["exit_code"] != a["exit_code"]:
            diffs.append(f"exit code {b['exit_code']} -> {a['exit_code']}")
        sa = {s["name"]: s for s in a["stages"]}
        for s in b["stages"]:
            t = sa.get(s["name"])
            if t is None:
                diffs.append(f"{s['name']}: not run after")
                continue
            if s["status"] != t["status"]:
                diffs.append(f"{s['name']}: status {s['status']} -> {t['status']}")
            for k, v in s["metrics"].items():
                compared += 1
                if not same(v, t["metrics"].get(k)):
                    diffs.append(f"{s['name']}.{k}: {v} -> {t['metrics'].get(k)}")
            for k in t["metrics"].keys() - s["metrics"].keys():
                diffs.append(f"{s['name']}.{k}: new ({t['metrics'][k]})")
            if [g["verdict"] for g in s["gates"]] != [g["verdict"] for g in t["gates"]]:
                diffs.append(f"{s['name']}: gate verdicts {s['gates']} -> {t['gates']}")
        rows.append({"pipeline": name, "exit_code": [b["exit_code"], a["exit_code"]], "metrics_compared": compared,
                     "gates_compared": sum(len(s["gates"]) for s in b["stages"]), "identical": not diffs,
                     "differences": diffs})
    return rows


def compare(args) -> None:
    """benchmarks/results/equivalence.json: the records compared pipeline by pipeline (and the untimed pair,
    when given, for the pipelines whose timed records differ)."""
    from common import Recorder

    recorder = Recorder("equivalence", quick=True)  # shrunk budgets
    load = lambda path: json.loads(Path(path).read_text())  # noqa: E731
    before, after = load(args.before), load(args.after)
    rows = pairs(before, after)
    identical = sum(r["identical"] for r in rows)
    checks = [{"name": "shipped pipelines with identical non-timing metrics and gate verdicts", "value": identical,
               "target": f"= {len(rows)}", "passed": identical == len(rows)}]
    results = {"before": before["commit"], "after": after["commit"], "steps": before["steps"],
               "changes": next(iter(before["pipelines"].values()))["changes"], "pipelines": rows}
    if args.untimed:
        untimed = pairs(load(args.untimed[0]), load(args.untimed[1]))
        names = ", ".join(r["pipeline"] for r in untimed)
        checks.append({"name": f"identical with no choice made by a timing ({names})",
                       "value": sum(r["identical"] for r in untimed), "target": f"= {len(untimed)}",
                       "passed": all(r["identical"] for r in untimed)})
        results["untimed"] = untimed
    for r in rows + results.get("untimed", []):
        print(f"{r['pipeline']:24} {'identical' if r['identical'] else 'DIFFERS'} "
              f"({r.get('metrics_compared', 0)} metrics, {r.get('gates_compared', 0)} gates)")
        for d in r["differences"]:
            print(f"    {d}")
    path = recorder.save(results, checks, deviations=args.deviation)
    recorder.report(checks, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--timeout", type=int, default=1500)
    r.add_argument("--only", nargs="*")
    r.add_argument("--again", action="store_true", help="re-run pipelines already in --out")
    r.add_argument("--untimed", action="store_true", help="no choice made by a timing (see shrink)")
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--untimed", nargs=2, metavar=("BEFORE", "AFTER"), help="the same pipelines recorded --untimed")
    c.add_argument("--deviation", action="append", default=[], help="how a record strayed from its commit (repeatable)")
    args = p.parse_args()
    record(args) if args.cmd == "record" else compare(args)


if __name__ == "__main__":
    main()
