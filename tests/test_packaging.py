"""A wheel install works without the checkout: the BentoML service files ship inside the package."""

import re
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_the_service_and_serving_finds_it_there(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info into the source tree
    for name in ("lifecycle", "serving"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("lifecycle-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"lifecycle/_service/service.py", "lifecycle/_service/bentofile.yaml", "lifecycle/edge/predictor.py",
            "lifecycle/evaluation/metrics/accuracy/accuracy.py"} <= names
    # pyproject.toml lists the packages by hand: a new subpackage (or metric script) left out would
    # be missing from the wheel while every test of the editable install still passes
    sources = {str(p.relative_to(src)) for p in (src / "lifecycle").rglob("*.py")}
    sources |= {f"lifecycle/_service/{p.name}" for p in (src / "serving").glob("*.py")}  # the service's own modules
    assert sources <= names, sorted(sources - names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", "import lifecycle.serving as s; print(s.SERVICE_DIR)"],
                         env={"PYTHONPATH": str(target), "PATH": ""}, cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == str(target / "lifecycle" / "_service")


def test_every_folder_of_lifecycle_with_python_files_is_a_listed_package():
    """The cheap form of the wheel check above: pyproject.toml lists the packages by hand, so a new folder of
    modules (lifecycle/edge/ when edge.py became a package) left out would ship without its code while the
    editable install works. Every folder under lifecycle/ that holds .py files is in [tool.setuptools] packages."""
    listed = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    packages = set(re.findall(r'"([\w.]+)"', listed.group(1)))  # (tomllib is not in Python 3.10)
    folders = {".".join(f.parent.relative_to(ROOT).parts) for f in (ROOT / "lifecycle").rglob("*.py")
               if "__pycache__" not in f.parts}
    assert "lifecycle.edge" in folders
    assert folders <= packages, sorted(folders - packages)
