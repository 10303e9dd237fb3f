"""Re-records every result in benchmarks/results on one clean commit, one benchmark at a time.

    make record                                    # all of them: hours on 2 cores
    .venv/bin/python benchmarks/record.py --only image spinning
    .venv/bin/python benchmarks/record.py --list   # what runs, and how
    .venv/bin/python benchmarks/record.py --stale  # which stored results no longer describe the tree

A tree with changes that are not committed is refused before anything runs (a result names its commit,
so it must be that commit's code), and so is a run during which HEAD moved. Each benchmark runs in its
own process holding /tmp/lifecycle-heavy.lock, so no other heavy job on this machine overlaps it; the
quick form where the full one takes more than ~30 minutes on 2 cores (the result says `"quick": true`).
At the end a table lists each result with its exit status and every check.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RECORDED, ROOT  # first: it sets the offline environment

from lifecycle import environment, report

LOCK = Path("/tmp/lifecycle-heavy.lock")
# result -> the arguments of its command (`python benchmarks/<script> ...`), with each full run's rough length
BENCHMARKS = {
    "audio_pipeline": ["audio.py", "pipeline"],          # ~6 min
    "audio_latency": ["audio.py", "latency"],            # ~1 min
    "audio": ["audio.py", "training"],                   # ~15-25 min
    "dapt_chemprot": ["dapt_chemprot.py", "--quick"],    # quick ~1 h (full: many hours)
    "distill": ["distill.py", "--quick"],                # quick ~31 min (full: hours)
    "embedding": ["embedding.py"],                       # ~12 min
    "generation": ["generation.py"],                     # ~3 min
    "image": ["image.py"],                               # ~1 min
    "latency_gate": ["latency_gate.py"],                 # ~4 min
    "lora_binary": ["lora_binary.py"],                   # ~2 min
    "masked_image": ["masked_image.py"],                 # ~1 min
    "pretrain_overhead": ["pretrain_overhead.py"],       # ~10 min
    "quantize": ["quantize.py"],                         # ~30 min
    "release_gate": ["release_gate.py", "--quick"],      # quick: minutes (full: ~55 min)
    "reliability": ["reliability.py"],                   # ~6 min
    "serving": ["serving.py"],                           # ~10 min
    "spinning": ["spinning.py"],                         # ~2 min
    "tabular": ["tabular.py"],                           # ~7 min
}
# results this command does not write, and how they are made
ELSEWHERE = {"equivalence": "compares two commits: `equivalence.py record` on each, then `equivalence.py compare`"}


def stale(result: dict) -> list[str]:
    """Why a stored result no longer describes this tree (empty: it does): recorded without provenance, on a
    dirty tree, or before a change to a file it records a hash of (its scripts, the package sources)."""
    env = result.get("environment", {})
    if "sources" not in env:
        return ["recorded without hashes of its scripts and sources (before provenance was recorded)"]
    why = ["recorded on a dirty tree"] if env.get("dirty") else []
    for path, digest in env["files"].items():
        if not (ROOT / path).is_file() or environment.sha256(ROOT / path) != digest:
            why.append(f"{path} changed")
    now = environment.source_hashes()
    if environment.sources_sha256(now) != env["sources_sha256"]:
        changed = sorted(p for p in now.keys() | env["sources"].keys() if now.get(p) != env["sources"].get(p))
        why.append(f"{len(changed)} source files changed ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})")
    return why


def stored() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RECORDED.glob("*.json"))}


def run_one(name: str) -> tuple[int, float]:
    """The benchmark's command, holding the heavy-job lock for its whole run; (exit status, seconds)."""
    LOCK.touch(exist_ok=True)
    with LOCK.open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.time()
        script, *args = BENCHMARKS[name]
        code = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT).returncode
        return code, time.time() - started


def fresh(name: str, commit: str | None) -> dict:
    """The result as written on `commit` ({} when the run wrote none: a crash leaves the older file)."""
    path = RECORDED / f"{name}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    return result if result.get("environment", {}).get("git_commit") == commit else {}


def summary(names: list[str], outcomes: dict[str, tuple[int, float]], commit: str | None) -> str:
    rows = []
    for name in names:
        result = fresh(name, commit)
        code, seconds = outcomes.get(name, (None, 0.0))
        form = "quick" if result.get("quick") else "full"
        none = [{"name": "(no result written on this commit)", "passed": False, "value": "", "target": ""}]
        for i, c in enumerate(result.get("checks") or none):
            verdict = c.get("status", "pass" if c["passed"] else "fail")
            head = [name, form, code, f"{seconds / 60:.1f}"] if i == 0 else ["", "", "", ""]
            rows.append([*head, verdict, c["name"], c["value"] if isinstance(c["value"], str) else f"{c['value']:.4g}",
                         c["target"]])
    return report.table(["result", "form", "exit", "minutes", "check", "name", "value", "target"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="these results only")
    ap.add_argument("--list", action="store_true", help="print each result's command and exit")
    ap.add_argument("--stale", action="store_true", help="print the stored results that no longer describe the tree")
    args = ap.parse_args()
    if args.list:
        for name, command in BENCHMARKS.items():
            print(f"{name:18} python benchmarks/{' '.join(command)}")
        for name, how in ELSEWHERE.items():
            print(f"{name:18} not re-recorded here: {how}")
        return 0
    if args.stale:
        found = {name: why for name, result in stored().items() if name not in ELSEWHERE and (why := stale(result))}
        for name, why in found.items():
            print(f"{name}: {'; '.join(why)}")
        return 1 if found else 0
    commit = environment.git_commit()
    if environment.dirty() is not False:
        raise SystemExit("refused: the tree has changes that are not committed (or is not a git checkout); every "
                         "result must name the commit it measured. Commit first.")
    names, outcomes = args.only or list(BENCHMARKS), {}
    for name in names:
        print(f"\n=== {name}: python benchmarks/{' '.join(BENCHMARKS[name])}", flush=True)
        outcomes[name] = run_one(name)
        if environment.git_commit() != commit:
            raise SystemExit(f"stopped: HEAD moved from {commit} during the run; the results would name two commits")
    print(f"\nrecorded on {commit}\n" + summary(names, outcomes, commit))
    return 0 if all(fresh(name, commit) for name in names) else 1  # a missed check is recorded; a missing result is not


if __name__ == "__main__":
    sys.exit(main())
