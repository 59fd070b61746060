"""The Definitions, checked in seconds: they load, they speak only public Dagster, and every
asset sits in its pipeline stage's group. No corpus, model or build needed."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_assets.definitions import build_definitions
from qwen_assets.settings import load_settings

PACKAGE = Path(__file__).resolve().parents[1] / "qwen_assets"
REPO = PACKAGE.parent
STAGES = {
    "corpus": {"raw_newsgroups", "newsgroups_sample", "document_properties"},
    "embeddings": {"task_instructions", "task_embeddings"},
    "projection": {"umap_coordinates"},
    "site": {
        "site_data",
        "task_quality",
        "instruction_effects",
        "map_clusters",
        "site_builds",
        "site_pages",
    },
    "query": {"task_documents", "category_centroids", "query_database"},
}


def private_dagster_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [
            name
            for name in names
            if name.split(".")[0].startswith("dagster")
            and any(part.startswith("_") for part in name.split(".")[1:])
        ]
    return found


def test_the_project_imports_no_private_dagster_module():
    offenders = {
        str(path.relative_to(REPO)): private_dagster_imports(path.read_text())
        for path in PACKAGE.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_every_dagster_member_the_project_uses_without_a_public_promise_is_still_there():
    """The non-public Dagster members, tag names and error class names are fenced in one
    module (each with its reason); an upgrade that removes one fails here, naming it, and no
    other module uses one."""
    from dagster import instance_for_test

    from qwen_assets.dagster_internals import ERROR_CLASS_NAMES, MEMBERS, STORAGE_MEMBERS, TAGS

    missing = [f"{owner.__name__}.{name}" for owner, name in MEMBERS if not hasattr(owner, name)]
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        missing += [
            f"EventLogStorage.{name}" for name in STORAGE_MEMBERS if not hasattr(storage, name)
        ]
    dagster_errors = {
        kind.__name__
        for kind in all_subclasses(BaseException)
        if kind.__module__.startswith("dagster")
    }
    missing += [name for name in ERROR_CLASS_NAMES if name not in dagster_errors]
    assert missing == [], f"Dagster no longer has {', '.join(missing)}: see dagster_internals.py"
    fenced = [
        *(rf"\.{name}\b" for _, name in MEMBERS),
        *(rf"\.{name}\b" for name in STORAGE_MEMBERS),
        *(re.escape(f'"{literal}"') for literal in [*TAGS, *ERROR_CLASS_NAMES]),
    ]
    used_elsewhere = {
        str(path.relative_to(REPO)): [
            pattern for pattern in fenced if re.search(pattern, path.read_text())
        ]
        for path in PACKAGE.rglob("*.py")
        if path.name != "dagster_internals.py"
    }
    assert {path: found for path, found in used_elsewhere.items() if found} == {}, (
        "only dagster_internals.py uses them"
    )


def all_subclasses(kind: type) -> set[type]:
    found: set[type] = set()
    pending = [kind]
    while pending:
        for child in pending.pop().__subclasses__():
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def test_dagster_still_writes_the_tags_the_stale_rule_reads_and_builds_a_tagged_range():
    """The tag names are Dagster's own strings, not exported: a versioned asset's
    materialization carries the code and data version tags, and a run tagged with a range
    materializes exactly that range."""
    from dagster import (
        AssetKey,
        Definitions,
        StaticPartitionsDefinition,
        asset,
        define_asset_job,
        instance_for_test,
    )

    from qwen_assets.dagster_internals import (
        CODE_VERSION_TAG,
        DATA_VERSION_TAG,
        PARTITION_RANGE_END_TAG,
        PARTITION_RANGE_START_TAG,
    )

    letters = StaticPartitionsDefinition(["a", "b", "c", "d"])

    @asset(code_version="7", partitions_def=letters)
    def lettered(context) -> None:
        context.log.info(f"built {context.partition_keys}")

    defs = Definitions(assets=[lettered], jobs=[define_asset_job("letters")])
    with instance_for_test() as instance:
        job = defs.resolve_job_def("letters")
        tags = {PARTITION_RANGE_START_TAG: "b", PARTITION_RANGE_END_TAG: "c"}
        assert job.execute_in_process(instance=instance, tags=tags).success
        records = instance.fetch_materializations(AssetKey("lettered"), limit=10).records
        built = sorted(record.partition_key for record in records)
        assert built == ["b", "c"], "one run built exactly the tagged range"
        written = records[0].asset_materialization.tags
        assert written[CODE_VERSION_TAG] == "7" and written[DATA_VERSION_TAG]


def test_a_column_added_to_a_site_table_makes_the_site_assets_stale(monkeypatch):
    """A project built before task_quality had a column must not call that table fresh."""
    from dagster import AssetKey

    from qwen_assets.defs import tables

    def versions() -> dict[str, str | None]:
        defs = build_definitions(load_settings())
        return {
            name: defs.resolve_assets_def(name).code_versions_by_key[AssetKey(name)]
            for name in ("site_data", "task_quality", "task_embeddings")
        }

    before = versions()
    added = [*tables.COLUMNS["task_quality"], ("new_figure", "DOUBLE", "a figure added later")]
    monkeypatch.setitem(tables.COLUMNS, "task_quality", added)
    after = versions()
    assert after["site_data"] != before["site_data"]
    assert after["task_quality"] != before["task_quality"]
    assert after["task_embeddings"] == before["task_embeddings"], "nothing is embedded again"


def test_the_catalog_shows_every_column_description_whole():
    """Dagster's UI renders descriptions as Markdown, where ``<target>`` is an HTML tag and
    vanishes: every description of every asset and column reads as written."""
    specs = build_definitions(load_settings()).resolve_all_asset_specs()
    swallowed = re.compile(r"<[A-Za-z/!]")
    found = []
    for spec in specs:
        schema = spec.metadata.get("dagster/column_schema")
        columns = [column.description or "" for column in schema.columns] if schema else []
        texts = [spec.description or "", *columns]
        found += [
            f"{spec.key.to_user_string()}: {text}" for text in texts if swallowed.search(text)
        ]
    assert found == []


def test_the_private_import_check_catches_one():
    assert private_dagster_imports("from dagster._core.storage.tags import X") == [
        "dagster._core.storage.tags"
    ]
    assert private_dagster_imports("import dagster_shared._serdes") == ["dagster_shared._serdes"]
    assert private_dagster_imports("from dagster import asset") == []


# What computes (a model, UMAP, scikit-learn's estimators): imported by the steps that need
# it, never by loading the definitions, which `dg dev`, every reload and every plan pay.
HEAVY_MODULES = ["torch", "sentence_transformers", "transformers", "umap", "numba", "sklearn"]


def test_definitions_load_without_the_heavy_libraries_with_every_asset_in_its_stage_group():
    """From a new process, as `dg dev` and a reload load them: none of the libraries that
    compute is imported."""
    loading = (
        "import sys; from qwen_assets.definitions import defs; "
        "defs.resolve_job_def('build_assets'); "
        f"print([name for name in {HEAVY_MODULES!r} if name in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", loading], capture_output=True, text=True, timeout=120
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split("\n")[-2] == "[]", loaded.stdout
    defs = build_definitions(load_settings())
    defs.resolve_job_def("build_assets")  # the one job resolves over every asset
    assert {job.name for job in defs.jobs} == {"build_assets", "rebuild_stale"}
    groups: dict[str, set[str]] = {}
    for spec in defs.resolve_all_asset_specs():
        groups.setdefault(spec.group_name, set()).add(spec.key.to_user_string())
    assert groups == STAGES
    assert {sensor.name for sensor in defs.sensors} == {
        "rebuild_stale_assets",
        "observe_task_instructions",
        "continue_rebuild",
    }
    assert {schedule.name for schedule in defs.schedules} == {"daily_rebuild"}


# The dg of the environment running the tests, whether or not that environment is activated.
DG = Path(sys.executable).with_name("dg")


@pytest.mark.skipif(not DG.exists(), reason="dg (dagster-dg-cli) is not installed")
def test_dg_lists_the_definitions_from_the_repo_root(tmp_path: Path):
    # Its own Dagster home: without one, dg makes a temporary home in the repository, where
    # another worker's end-of-session check would find a developer's folder touched.
    listed = subprocess.run(
        [str(DG), "list", "defs", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert listed.returncode == 0, listed.stderr
    payload = json.loads(listed.stdout)
    keys = {asset["asset_key"] for asset in payload["assets"]}
    assert keys >= set().union(*STAGES.values()) - {"task_instructions"}


def test_a_wheel_installed_elsewhere_builds_the_site_pages(tmp_path: Path):
    """A non-editable install carries the site sources: the pages build from any folder."""
    import sys

    wheels, target = tmp_path / "wheels", tmp_path / "installed"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("qwen_assets-*.whl")
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    script = (
        "import sys, qwen_assets.pipeline.site as site; from pathlib import Path; "
        "assert Path(site.__file__).is_relative_to(Path(sys.argv[1])), site.__file__; "
        "written = site.write_pages(Path('out'), ['default', 'topic'], webgl=False); "
        "print(sorted(p.name for p in written)); "
        "print(open('out/vendor/plotly.min.js').read(200)); "
        # the settings file and the instance's dagster.yaml travel in the wheel too
        "from qwen_assets.settings import default_settings_path, load_settings; "
        "assert default_settings_path().is_relative_to(Path(sys.argv[1])); "
        "print('tasks:', ','.join(load_settings().task_names)); "
        "from qwen_assets.cli import dagster_instance; "
        "dagster_instance(); "
        "print(open(Path(sys.argv[2]) / 'dagster.yaml').read())"
    )
    pages = subprocess.run(
        [sys.executable, "-c", script, str(target), str(tmp_path / "home")],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("QWEN_ASSETS_")},
            "PYTHONPATH": str(target),
            "DAGSTER_HOME": str(tmp_path / "home"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pages.returncode == 0, pages.stderr
    for name in ["index.html", "compare.html", "task-topic.html", "explorer.js", "plotly.min.js"]:
        assert name in pages.stdout
    assert "(basic - minified)" in pages.stdout, "the wheel ships the basic plotly.js bundle"
    assert "tasks: default,topic,sentiment,toxicity" in pages.stdout, "and its settings file"
    assert "max_concurrent_runs: 1" in pages.stdout, "and the instance settings it copies"


def test_the_repositorys_dagster_home_holds_the_packages_instance_settings():
    """`export DAGSTER_HOME=$PWD/.dagster` (the README) finds the instance settings the
    package ships and `qwen-assets build` copies; no dagster.yaml sits in the repository
    root, where Dagster would warn that it is ignored."""
    assert (REPO / ".dagster" / "dagster.yaml").resolve() == (PACKAGE / "dagster.yaml").resolve()
    assert not (REPO / "dagster.yaml").exists()
