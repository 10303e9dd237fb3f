"""The README's measured sections are what docs/render.py renders from the stored results: a figure
typed by hand, or a result re-recorded without re-rendering, fails here."""

import importlib.util
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
