"""The suite never touches a user's files, whatever they exported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_assets_tests.conftest import PROJECT_VARIABLES, REPO, VECTORS_OPTION

# Tests that load the settings (the default file and their own) and build a project through
# the loopback server: each would read or write the exported paths were the suite not sealed.
TOUCHING = [
    "qwen_assets_tests/test_settings.py::test_defaults_reproduce_the_published_demo",
    "qwen_assets_tests/test_checks.py::test_a_failing_blocking_check_stops_the_map",
]


@pytest.mark.long_running(seconds=18)
def test_a_developers_exported_variables_reach_no_test(tmp_path: Path, vectors_folder):
    """Every project variable exported to a path of its own, as the README shows a user doing:
    a run of tests that build projects and load settings passes, and nothing is written
    there."""
    theirs = tmp_path / "theirs"
    exported = {variable: str(theirs / variable.lower()) for variable in PROJECT_VARIABLES}
    exported["QWEN_ASSETS_SETTINGS"] = str(theirs / "settings.toml")
    store = [f"{VECTORS_OPTION}={vectors_folder}"] if vectors_folder else []
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            *store,
            *TOUCHING,
        ],
        cwd=REPO,
        env={**os.environ, **exported},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout
    assert not theirs.exists(), "nothing was written where the user's variables point"
