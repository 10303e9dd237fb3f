"""Every shipped pipeline loads and validates; each opens with the command that runs it."""

from pathlib import Path

import pytest

from lifecycle.config import load

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "pipelines").glob("*.yaml")) + sorted((ROOT / "tests" / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
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
