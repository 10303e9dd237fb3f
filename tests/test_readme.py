"""The README's measured sections are what docs/render.py renders from the stored results: a figure
typed by hand, or a result re-recorded without re-rendering, fails here."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_sections_match_the_stored_results():
    spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    readme = (ROOT / "README.md").read_text()
    assert render.render(readme) == readme, "README.md is out of date: run `python docs/render.py`"
    edited = readme.replace("| pass |", "| **miss** |", 1)
    assert edited != readme and render.render(edited) == readme  # a hand edit is rendered away


# A figure: a number with a unit (ms, s, minutes, x/×, %, req/s, MB, points) or a score-like decimal (0.98).
FIGURE = re.compile(r"(?<![\w.\-/])[~≈]?\d+(?:[.,]\d+)*(?:\s*[-–]\s*\d+(?:\.\d+)?)?\s*"
                    r"(?:ms|s|seconds?|min(?:utes?)?|hours?|×|x|%|req/s|MB|GB|points?)(?![\w/])"
                    r"|(?<![\w.])0\.\d{2,}(?!\d)")
SETTING = re.compile(r"(?:\w:|--[\w-]+|=)\s*$")  # `min: 0.85`, `--max-drop 0.01`: a value a user writes, not a measurement
# Figures outside the generated sections that are definitions, targets or settings, not measurements:
# each by the words around it, so the same number typed as a measurement elsewhere still fails.
NOT_MEASURED = {
    "at most 1 point below": "what max_drop 0.01 means",
    "at least 2x faster": "what max_ratio 0.5 means",
    "95% interval": "the interval's level", "95% t-interval": "the interval's level", "drop's 95%": "the interval's level",
    "at most 0.2x fp32": "the int4 size target",
    "with 60% of its features": "SCARF's corruption rate, a setting",
    '"score": 0.999': "the shape of an answer in the Python example",
    "(2 s)": "max_connection_age_s's default",
    "a warning above 20%": "the input-bound warning's threshold",
    "30% masking": "a setting tried",
    # TODO(issue 39, release-gating rewrite): a measured spread typed by hand; that section's rewrite removes it
    "disagree by 2 points": "pending the release-gating section's rewrite",
}


def hand_typed(readme: str) -> list[str]:
    """Figures outside the generated sections that are neither a setting nor in NOT_MEASURED: a measured
    figure belongs in a section docs/render.py renders from a stored result."""
    outside = re.sub(r"<!-- generated:(\w+) -->\n.*?<!-- /generated:\1 -->", "", readme, flags=re.S)
    found = []
    for line in outside.splitlines():
        for m in FIGURE.finditer(line):
            if SETTING.search(line[:m.start()]) or any(m.group(0) in p and p in line for p in NOT_MEASURED):
                continue
            found.append(f"{m.group(0)!r} in: {line.strip()[:100]}")
    return found


def test_no_figure_outside_a_generated_section_is_typed_by_hand():
    readme = (ROOT / "README.md").read_text()
    assert hand_typed(readme) == []
    typed = readme.replace("## Benchmarks\n", "## Benchmarks\n\nThe service answers in ~5 ms at 1,730 req/s, 2.43× eager, "
                           "accuracy 0.98.\n", 1)
    assert [f.split(" in:")[0] for f in hand_typed(typed)] == ["'~5 ms'", "'1,730 req/s'", "'2.43×'", "'0.98'"]


def test_the_measured_sections_say_what_each_figure_is():
    import json

    readme = (ROOT / "README.md").read_text()
    serving = json.loads((ROOT / "benchmarks" / "results" / "serving.json").read_text())
    for name, r in serving["results"].items():  # the load generator the result says produced the row's figures
        used = (r.get("tuned_wrk") or r["tuned"])["load_generator"].split(" (")[0]
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name} | "))
        assert row.rstrip(" |").endswith(used), row
    quickstart = readme.split("<!-- generated:quickstart -->")[1].split("<!-- /generated:quickstart -->")[0]
    assert "| pretrain | passed | perplexity " in quickstart and "| finetune | passed | accuracy " in quickstart
