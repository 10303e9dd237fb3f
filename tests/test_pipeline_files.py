"""Every shipped pipeline loads and validates; each opens with the command that runs it."""

from pathlib import Path

import pytest
from conftest import needs_shared_data

from lifecycle.config import load

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "pipelines").glob("*.yaml")) + sorted((ROOT / "tests" / "pipelines").glob("*.yaml"))


# Loading checks that every data file exists; files under ../shared/data exist on project machines only.
CASES = [pytest.param(f, marks=needs_shared_data()) if "shared/data" in f.read_text() else f for f in FILES]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_pipeline_file_validates(path):
    pipeline = load(path)
    assert pipeline.stages
    if path.parent.name == "pipelines" and path.parent.parent == ROOT:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# lifecycle run ") or first.startswith("# Run:"), f"{path.name} must open with its run command"


def test_python_quickstart_builds_the_same_pipeline_as_the_yaml():
    import runpy

    script = runpy.run_path(str(ROOT / "pipelines" / "quickstart.py"), run_name="pipeline_definition")
    from_python = script["pipeline"].model_dump()
    from_yaml = load(ROOT / "pipelines" / "quickstart.yaml").model_dump()
    assert from_python.pop("name") == "quickstart-py" and from_yaml.pop("name") == "quickstart"
    assert from_python == from_yaml
