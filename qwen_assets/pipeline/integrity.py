"""Is what each asset wrote still there and whole?

Dagster's records say what was built; they cannot see a file deleted, truncated or edited
since. Before planning, a build asks this module which outputs are gone or damaged, and
rebuilds those as it rebuilds what an edit made stale: a deleted database people query, a
site folder someone emptied, a ``data.json`` that no longer matches the build that wrote it.
Everything here only reads, and a database that is busy (a run writing it) is not judged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import duckdb

from qwen_assets.pipeline.query import VIEWS
from qwen_assets.pipeline.site import DETAILS_FILE, OWNED_MARKER, task_page_name
from qwen_assets.pipeline.storage import (
    DatabaseBusyError,
    DatabaseDamagedError,
    StorageError,
    connect,
    is_local_file,
    shown,
    table_exists,
)
from qwen_assets.settings import Settings

# (asset name, partition key or None) -> why its output must be made again.
Damage = dict[tuple[str, str | None], str]

TABLES = ("raw_newsgroups", "newsgroups_sample", "document_properties")
SITE_TABLES = ("task_quality", "instruction_effects", "map_clusters", "site_builds")
PARTITIONED = ("task_embeddings", "umap_coordinates")
PAGES = ("index.html", "compare.html", "vendor/plotly.min.js", "assets/common.js")
QUICK_WAIT_SECONDS = 1.0


def damaged_outputs(settings: Settings, maps: Mapping[str, tuple[str, str]]) -> Damage:
    """Outputs that are missing or damaged, with why. ``maps``: each partition key of the
    task_embeddings and umap_coordinates assets -> its (variant, task)."""
    damage: Damage = {}
    builds = settings.storage.build_database
    if is_local_file(builds) and not Path(builds).expanduser().exists():
        # A project from before builds had a database of their own: the next run starts the
        # builds' database from a copy of the one people query (see the Warehouse resource).
        published = settings.storage.database
        if is_local_file(published) and Path(published).expanduser().exists():
            builds = published
    damage.update(_builds_database(builds, maps))
    damage.update(_query_database(settings.storage.database))
    damage.update(_site(settings, settings.storage.build_database))
    folder = settings.publish.folder
    if folder and not (Path(folder) / OWNED_MARKER).is_file():
        damage[("published_site", None)] = f"the publish folder {folder} is missing"
    return damage


def _builds_database(database: str, maps: Mapping[str, tuple[str, str]]) -> Damage:
    every = [(name, None) for name in (*TABLES, *SITE_TABLES, *VIEWS)] + [
        (name, key) for name in PARTITIONED for key in maps
    ]
    if is_local_file(database) and not Path(database).expanduser().exists():
        return dict.fromkeys(every, f"the builds' database {database} is missing")
    damage: Damage = {}
    try:
        with connect(database, read_only=True, wait_seconds=QUICK_WAIT_SECONDS) as connection:
            for name in (*TABLES, *SITE_TABLES, *VIEWS):
                if not table_exists(connection, name):
                    damage[(name, None)] = f"table {name} is missing from {shown(database)}"
            if ("newsgroups_sample", None) in damage:
                return damage | {(n, k): "its rows need the sample" for n, k in every if k}
            documents = connection.execute("SELECT count(*) FROM newsgroups_sample").fetchone()[0]
            for name in PARTITIONED:
                counted = (
                    connection.execute(
                        f'SELECT variant, task, count(*) FROM "{name}" GROUP BY ALL'
                    ).fetchall()
                    if table_exists(connection, name)
                    else []
                )
                rows = {(variant, task): count for variant, task, count in counted}
                for key, place in maps.items():
                    if rows.get(place, 0) != documents:
                        damage[(name, key)] = (
                            f"{name} holds {rows.get(place, 0)} rows of {key} for the "
                            f"{documents} sample posts"
                        )
    except DatabaseBusyError:
        return {}  # a run is writing it: judged on the next plan
    except DatabaseDamagedError:
        raise  # rebuilding into it would fail: the caller moves it aside or says so
    except (StorageError, duckdb.Error) as error:
        return dict.fromkeys(every, str(error).splitlines()[0])
    return damage


def _query_database(database: str) -> Damage:
    try:
        with connect(database, read_only=True, wait_seconds=QUICK_WAIT_SECONDS) as connection:
            if not all(table_exists(connection, name) for name in (*TABLES, *PARTITIONED)):
                return {("query_database", None): f"{shown(database)} lacks tables"}
            connection.execute("SELECT count(*) FROM task_embeddings").fetchone()
    except DatabaseBusyError:
        return {}
    except (StorageError, duckdb.Error) as error:
        return {("query_database", None): str(error).splitlines()[0]}
    return {}


def _site(settings: Settings, database: str) -> Damage:
    site = Path(settings.site.output_dir)
    damage: Damage = {}
    payload = site / "data.json"
    try:
        encoded = payload.read_bytes()
        json.loads(encoded)
    except (OSError, ValueError):
        damage[("site_data", None)] = f"{payload} is missing or not JSON"
    else:
        built = _last_payload_hash(database)
        if built is not None and hashlib.sha256(encoded).hexdigest() != built:
            damage[("site_data", None)] = f"{payload} is not the payload the last build wrote"
    if not all((site / name).is_file() for name in ("data.js", DETAILS_FILE)):
        damage.setdefault(("site_data", None), f"the site's scripts in {site} are missing")
    pages = [*PAGES, *(task_page_name(task) for task in settings.task_names)]
    gone = [name for name in pages if not (site / name).is_file()]
    if gone:
        damage[("site_pages", None)] = f"{site / gone[0]} is missing"
    return damage


def _last_payload_hash(database: str) -> str | None:
    try:
        with connect(database, read_only=True, wait_seconds=QUICK_WAIT_SECONDS) as connection:
            if not table_exists(connection, "site_builds"):
                return None
            row = connection.execute(
                "SELECT payload_sha256 FROM site_builds ORDER BY built_at DESC LIMIT 1"
            ).fetchone()
    except (StorageError, duckdb.Error):
        return None
    return row[0] if row else None
