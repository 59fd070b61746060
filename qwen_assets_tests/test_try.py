"""`qwen-assets try`: the whole project, built in a minute or so with the small model, all in
one folder; and the line a failed first build ends with carries what to do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_assets.cli import TRIAL_GROUPS, TRIAL_PER_GROUP
from qwen_assets_tests.conftest import REPO


def qwen_assets(cwd: Path, *arguments: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwen_assets.cli", *arguments],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **variables},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.long_running
def test_a_trial_builds_everything_in_its_folder_and_a_bad_model_says_what_to_do(
    archive, tmp_path: Path
):
    tried = qwen_assets(tmp_path, "try", "trial")
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "it does not follow instructions" in tried.stdout, "the small model is named as such"
    (first_line,) = re.findall(
        r"`(nothing is built yet: building all \d+ assets and partitions in \d+ runs)`",
        (REPO / "docs" / "rebuilds.md").read_text().replace("\n", " "),
    )
    assert first_line in tried.stdout, "a first build opens with the line the docs show"
    folder = tmp_path / "trial"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trial"], "nothing elsewhere"
    assert (folder / "settings.toml").read_text().startswith("# written by `qwen-assets try`")
    payload = json.loads((folder / "site" / "data.json").read_text())
    assert len(payload["documents"]["id"]) == len(TRIAL_GROUPS) * TRIAL_PER_GROUP
    assert (folder / "site" / "index.html").is_file()
    assert f"open {folder / 'site' / 'index.html'}" in tried.stdout

    # A person's own database and site, exported as the docs show: the trial keeps to its folder.
    theirs = tmp_path / "theirs"
    again = qwen_assets(
        tmp_path,
        "try",
        "trial",
        QWEN_ASSETS_DATABASE=str(theirs / "warehouse.duckdb"),
        QWEN_ASSETS_SITE_DIR=str(theirs / "site"),
    )
    assert again.returncode == 0, again.stderr
    assert "everything is fresh: nothing to build" in again.stdout
    assert "QWEN_ASSETS_DATABASE is set aside for the trial" in again.stdout
    assert not theirs.exists()

    # A folder holding a settings file the trial did not write is not built from.
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "settings.toml").write_text('[embedding]\nbackend = "http"\n')
    refused = qwen_assets(tmp_path, "try", "project")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        "was not written by qwen-assets try: a trial "
        "builds only in a folder of its own; name another FOLDER"
    )
    assert sorted(path.name for path in elsewhere.iterdir()) == ["settings.toml"]

    # The quick start's model, offline: the build's last line says why and what to do, whole.
    settings = folder / "settings.toml"
    lines = settings.read_text().splitlines()
    (model,) = [i for i, line in enumerate(lines) if line.startswith("model = ")]
    lines[model] = 'model = "Qwen/Qwen3-Embedding-0.6B"'
    settings.write_text("\n".join(lines) + "\n")
    failed = qwen_assets(tmp_path, "try", "trial")
    assert failed.returncode == 1
    said = failed.stderr.strip()
    assert "\n" not in said, said
    assert said.startswith("qwen-assets: task_embeddings")
    assert "cannot load the model 'Qwen/Qwen3-Embedding-0.6B'" in said
    assert "embedding.local.model" in said and "HTTP backend" in said, said
    assert said.count("(") == said.count(")"), said
