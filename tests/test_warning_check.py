"""The suite's own check (tests/conftest.py): a warning nobody asked for fails the session, after every test
ran; one a test asks for (pytest.warns) does not. Run on a two-test copy, in a fresh pytest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CASES = '''
import warnings

import pytest


def test_asks_for_its_warning():
    with pytest.warns(UserWarning, match="asked for"):
        warnings.warn("asked for", UserWarning)


def test_raises_one_nobody_asked_for():
    warnings.warn("nobody asked for this", UserWarning)
'''


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True, timeout=60)


def test_an_unasked_warning_fails_the_session_and_an_asked_one_does_not(tmp_path):
    shutil.copy2(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    asked = pytest_in(tmp_path, "-k", "asks_for")
    assert asked.returncode == 0, asked.stdout[-2000:]
    unasked = pytest_in(tmp_path)
    assert unasked.returncode == 1, unasked.stdout[-2000:]
    assert "2 passed" in unasked.stdout and "nobody asked for this" in unasked.stdout
    assert "1 unexpected warning(s)" in unasked.stdout
