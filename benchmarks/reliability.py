"""The README's reliability figures, from one run of the hardening tests (issues 17 and 36).

    flock /tmp/lifecycle-heavy.lock .venv/bin/python benchmarks/reliability.py   # ~12 minutes on 2 cores

Runs tests/test_hardening_config.py and tests/test_hardening_server.py with pytest (slow tests
included: the SIGKILL loop) and counts, from pytest's junit XML:
- config/data cases (tests/adversarial/config_cases.yaml, through the real CLI): tried, answered with the
  expected exit code and one-line message, nothing left behind (each case's test asserts all three);
- server cases (tests/adversarial/server_cases.yaml, against a real `bentoml serve`): tried, answered
  as expected within their time, server live (`/livez` and a normal request) after each;
- the kill loop: kills, finished runs, runs that resumed, all with the uninterrupted run's metrics;
- every other hardening test, by name, with its outcome and the file it is in (run: names, locks and
  file-system faults; release: the one verdict behind bundle/promote/serve/build, bounded archives and
  manifests, signed releases; server and config: the rest).
Writes benchmarks/results/reliability.json; docs/render.py puts the figures in the README.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import yaml
from common import ROOT, Recorder  # first: it sets the offline environment

TESTS = ["tests/test_hardening_config.py", "tests/test_hardening_run.py", "tests/test_hardening_release.py",
         "tests/test_hardening_server.py"]
KILLS = re.compile(r"(\d+) kills, (\d+) finished runs \((\d+) resumed\) in (\d+) s")


def cases(name: str) -> list[dict]:
    data = yaml.safe_load((ROOT / "tests" / "adversarial" / name).read_text())
    return data["cases"] if isinstance(data, dict) else data


def run_tests() -> dict:
    """junit testcases as {name: (outcome, message, stdout, file)}."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", *TESTS,
                        f"--junitxml={junit}", "-o", "junit_logging=system-out"], cwd=ROOT, check=False)
        root = ElementTree.parse(junit).getroot()
    out = {}
    for case in root.iter("testcase"):
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcome = "passed" if problem is None else problem.tag
        out[case.get("name")] = (outcome, (problem.get("message") or "") if problem is not None else "",
                                 case.findtext("system-out") or "", case.get("classname", "").rsplit(".", 1)[-1])
    return out


def summarise(tests: dict) -> dict:
    config = cases("config_cases.yaml")
    config_ok = sum(tests.get(f"test_case[{c['id']}]", ("missing",))[0] == "passed" for c in config)
    server = yaml.safe_load((ROOT / "tests" / "adversarial" / "server_cases.yaml").read_text())
    # the text classifier's matrix, then each other model's ({"model", "route", "cases"}), each one test that
    # collects one line per failed case ("<id>: ...") and asserts none failed
    matrices = [("test_server_abuse_matrix", server["cases"])] + [
        (f"test_server_abuse_matrix_of_other_models[{m['model']}]", m["cases"]) for m in server.get("models", [])]
    server_ok = unhealthy = tried = 0
    outcomes = []
    for name, listed in matrices:
        outcome, message, *_ = tests.get(name, ("missing", ""))
        outcomes.append(outcome)
        tried += len(listed)
        failed_ids = {c["id"] for c in listed if re.search(rf"(^|\n|\s){re.escape(c['id'])}:", message)}
        if outcome in ("passed", "failure"):
            server_ok += len(listed) - len(failed_ids)
            unhealthy += sum(1 for c in listed if re.search(rf"{re.escape(c['id'])}: unhealthy", message))
        else:
            unhealthy += len(listed)
    kill_name = "test_sigkill_at_random_points_always_resumes_to_the_same_result"
    kill_outcome, _, kill_out, _ = tests.get(kill_name, ("missing", "", "", ""))
    found = KILLS.search(kill_out)
    kills = dict(zip(("kills", "finished", "resumed", "seconds"), map(int, found.groups()))) if found else {}
    matrix_tests = {kill_name, *(name for name, _ in matrices), *(f"test_case[{c['id']}]" for c in config)}
    outcome = "passed" if all(o == "passed" for o in outcomes) else next(o for o in outcomes if o != "passed")
    return {
        "config_cases": {"tried": len(config), "as_expected_and_nothing_left": config_ok},
        "server_cases": {"tried": tried, "as_expected": server_ok, "live_after_each": tried - unhealthy,
                         "outcome": outcome},
        "kill_loop": {"outcome": kill_outcome, **kills},
        "other_tests": {name: t[0] for name, t in sorted(tests.items()) if name not in matrix_tests},
        "other_tests_by_file": _by_file({name: t for name, t in tests.items() if name not in matrix_tests}),
    }


def _by_file(tests: dict) -> dict:
    """{file stem: {"tried", "passed"}} of the tests given."""
    out: dict = {}
    for outcome, *_, stem in tests.values():
        counts = out.setdefault(stem, {"tried": 0, "passed": 0})
        counts["tried"] += 1
        counts["passed"] += outcome == "passed"
    return dict(sorted(out.items()))


def checks(r: dict) -> list[dict]:
    c, s, k = r["config_cases"], r["server_cases"], r["kill_loop"]
    others = r["other_tests"]
    return [
        {"name": "config/data cases answered as expected, nothing left behind", "value": c["as_expected_and_nothing_left"],
         "target": f"== {c['tried']}", "passed": c["as_expected_and_nothing_left"] == c["tried"]},
        {"name": "server cases answered as expected", "value": s["as_expected"], "target": f"== {s['tried']}",
         "passed": s["as_expected"] == s["tried"] and s["outcome"] == "passed"},
        {"name": "server live after each case", "value": s["live_after_each"], "target": f"== {s['tried']}",
         "passed": s["live_after_each"] == s["tried"]},
        {"name": "SIGKILLs of a training run, each resumed to the uninterrupted metrics", "value": k.get("kills", 0),
         "target": ">= 20", "passed": k["outcome"] == "passed" and k.get("kills", 0) >= 20},
        {"name": "other hardening tests passed", "value": sum(v == "passed" for v in others.values()),
         "target": f"== {len(others)}", "passed": all(v == "passed" for v in others.values())},
    ]


def main() -> int:
    recorder = Recorder("reliability", quick=False)
    recorder.measured = [ROOT / t for t in TESTS] + sorted((ROOT / "tests" / "adversarial").glob("*.yaml"))  # what it counts
    results = summarise(run_tests())
    found = checks(results)
    path = recorder.save(results, found)
    return recorder.report(found, path)


if __name__ == "__main__":
    sys.exit(main())
