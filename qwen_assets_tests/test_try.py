"""`qwen-assets try`: the whole project, built in a minute or so with the small model, all in
one folder; and the line a failed first build ends with carries what to do."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from qwen_assets.cli import TRIAL_GROUPS, TRIAL_PER_GROUP
from qwen_assets_tests import cli_process
from qwen_assets_tests.conftest import ARCHIVE_ENV, REPO

TASKS = ("default", "topic", "sentiment", "toxicity")
TOPIC = "Identify the topic or theme of the given text"


@pytest.fixture
def qwen_assets(
    small_archive: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`qwen-assets ARGUMENTS` in a new process, reading the trial's groups from the small
    archive (a first build reads the whole archive it is given); what it prints is kept
    outside the folder it runs in."""
    said = tmp_path_factory.mktemp("said")

    def run(cwd: Path, *arguments: str, **variables: str) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "HF_HUB_OFFLINE": "1", ARCHIVE_ENV: small_archive, **variables}
        return cli_process.run(arguments, environ, said, timeout=600, cwd=cwd)

    return run


@pytest.mark.long_running(seconds=22)
def test_a_trial_builds_everything_in_its_folder_and_a_bad_model_says_what_to_do(
    qwen_assets, tmp_path: Path
):
    tried = qwen_assets(tmp_path, "try", "trial")
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "it does not follow instructions" in tried.stdout, "the small model is named as such"
    (first_line,) = re.findall(
        r"`(nothing is built yet: building all \d+ assets and partitions in \d+ runs)`",
        (REPO / "docs" / "rebuilds.md").read_text().replace("\n", " "),
    )
    assert first_line in tried.stdout, "a first build opens with the line the docs show"
    texts = len(TRIAL_GROUPS) * TRIAL_PER_GROUP * len(TASKS)
    assert (
        f"time: up to {texts} texts for the in-process model, whose speed on this machine "
        "is not measured yet" in tried.stdout
    ), "a first build says its time is not known yet"
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

    # Once built, the time an edit costs is said before it is paid, at the speed Dagster
    # recorded for the trial's embeddings.
    settings = folder / "settings.toml"
    settings.write_text(settings.read_text().replace(TOPIC, "Name the subject of the given text"))
    planned = qwen_assets(
        tmp_path,
        "build",
        "--dry-run",
        QWEN_ASSETS_SETTINGS=str(settings),
        DAGSTER_HOME=str(folder / ".dagster"),
    )
    assert planned.returncode == 0, planned.stderr
    (said,) = re.findall(
        r"time: (\d+) texts for the in-process model, about .* at ([\d.]+) texts/s", planned.stdout
    )
    assert int(said[0]) == TRIAL_PER_GROUP * len(TRIAL_GROUPS), "the topic map's texts"
    with DagsterInstance.from_config(str(folder / ".dagster")) as instance:
        newest = (
            instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey("task_embeddings")), limit=1
            )
            .records[0]
            .asset_materialization.metadata
        )
    recorded = newest["computed"].value / newest["embedding_seconds"].value
    assert float(said[1]) == pytest.approx(recorded, abs=0.006)

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

    # The quick start's model, offline: the build's last line says why and what to do, whole;
    # before it, what such a build would cost on this machine, and the faster ways.
    lines = settings.read_text().splitlines()
    (model,) = [i for i, line in enumerate(lines) if line.startswith("model = ")]
    lines[model] = 'model = "Qwen/Qwen3-Embedding-0.6B"'
    settings.write_text("\n".join(lines) + "\n")
    failed = qwen_assets(tmp_path, "try", "trial")
    assert failed.returncode == 1
    ended = failed.stderr.strip()
    assert "\n" not in ended, ended
    assert ended.startswith("qwen-assets: task_embeddings")
    assert "cannot load the model 'Qwen/Qwen3-Embedding-0.6B'" in ended
    assert "embedding.local.model" in ended and "HTTP backend" in ended, ended
    assert ended.count("(") == ended.count(")"), ended
    assert "2 CPU cores take about 1.8 h" in failed.stdout
    assert "faster: an API" in failed.stdout


def test_a_trial_killed_while_writing_its_settings_is_not_refused_next_time(tmp_path: Path):
    """The settings file appears whole or not at all: what a kill mid-write leaves (a
    .partial) is written over, and the next trial builds in the folder instead of refusing
    it as someone else's."""
    from qwen_assets.cli import TRIAL_MARK, trial_settings

    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / "settings.toml.partial").write_text("[corpus]\nper_cat")  # cut off by a kill
    written = trial_settings(folder)
    assert written.read_text().startswith(TRIAL_MARK)
    assert sorted(path.name for path in folder.iterdir()) == ["data", "settings.toml"]
    assert trial_settings(folder) == written, "and the next trial uses it"
