"""A second corpus, end to end: posts of the 20 Newsgroups archive as someone's own Parquet
file (other column names, no labels), built, then grown by 10 %.

    python docs/examples/second_corpus.py path/to/20news-bydate.tar.gz second

writes ``second/posts.parquet`` and ``second/settings.toml`` (your settings file's embedding,
tasks and map settings; this corpus; the databases, cache, site and Dagster history under
``second/``), builds it with ``qwen-assets build``, appends 10 % more posts to the file and
builds again: the second build embeds only the new posts and places them onto the maps.
Your own project's files are not touched. docs/corpus.md explains each setting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd

from qwen_assets.pipeline.corpus import load_raw_newsgroups
from qwen_assets.pipeline.storage import read_table
from qwen_assets.settings import FILE_OVERRIDES, settings_path
from qwen_assets.testing import write_settings

GROUPS = ["comp.graphics", "rec.sport.hockey", "sci.med"]
FIRST_POSTS = 100
GROWN_POSTS = 110  # 10 % more
# The first line of the settings it writes: a folder holding anything else is not its own.
MARK = "# written by docs/examples/second_corpus.py\n"


def archive_posts(archive: str, count: int) -> pd.DataFrame:
    """The first ``count`` posts of three groups, as a table of one's own would hold them:
    the text as "message", an id as "ref", the group as an extra column, not as a label."""
    raw = load_raw_newsgroups(archive)
    chosen = raw[raw["category"].isin(GROUPS) & (raw["text"].str.strip().str.len() >= 200)]
    chosen = chosen.sort_values("corpus_position").head(count)
    return pd.DataFrame(
        {
            "ref": chosen["doc_id"].str.replace("/", "-"),
            "message": chosen["text"],
            "newsgroup": chosen["category"],
        }
    )


def write_project(folder: Path, base: Path) -> Path:
    """``folder``/settings.toml: ``base``'s settings, with this corpus and every file under
    ``folder``."""
    raw = tomllib.loads(base.read_text(encoding="utf-8"))
    raw["corpus"] = {
        "source": str(folder / "posts.parquet"),
        "text_column": "message",
        "id_column": "ref",
        "extra_columns": ["newsgroup"],  # shown beside each post; no label_column: no labels
    }
    raw["storage"] = {
        "database": str(folder / "second.duckdb"),
        "build_database": str(folder / "second_build.duckdb"),
        "embedding_cache": str(folder / "cache.duckdb"),
    }
    raw.setdefault("site", {})["output_dir"] = str(folder / "site")
    raw.pop("publish", None)
    path = write_settings(folder / "settings.toml", raw)
    path.write_text(MARK + path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def own_folder(folder: Path) -> bool:
    """Whether ``folder`` is new, empty, or one this example made (it writes nothing else)."""
    if not folder.exists() or not any(folder.iterdir()):
        return True
    settings = folder / "settings.toml"
    return settings.is_file() and settings.read_text(encoding="utf-8").startswith(MARK)


def build(folder: Path) -> str:
    """``qwen-assets build`` for the project in ``folder``; what it printed. Variables that
    point your project's files elsewhere are set aside: they would point this one there too."""
    environ = {key: value for key, value in os.environ.items() if key not in FILE_OVERRIDES}
    done = subprocess.run(
        [sys.executable, "-m", "qwen_assets.cli", "build"],
        env={
            **environ,
            "QWEN_ASSETS_SETTINGS": str(folder / "settings.toml"),
            "DAGSTER_HOME": str(folder / "dagster_home"),
        },
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    return done.stdout


def placed_posts(folder: Path) -> dict[str, int]:
    """Per map, the posts placed onto its layout after it was made."""
    rows = read_table(
        str(folder / "second.duckdb"),
        "SELECT task, count(placed_at) AS placed FROM umap_coordinates GROUP BY task ORDER BY task",
    )
    return dict(zip(rows["task"], rows["placed"].astype(int).tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", help="20news-bydate.tar.gz")
    parser.add_argument("folder", type=Path, help="a new folder for the second project")
    parser.add_argument(
        "--settings", type=Path, default=settings_path(), help="the settings to start from"
    )
    arguments = parser.parse_args()
    folder = arguments.folder.resolve()
    if not own_folder(folder):
        raise SystemExit(f"{folder} holds files this example did not write: name a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    posts = archive_posts(arguments.archive, GROWN_POSTS)
    posts.head(FIRST_POSTS).to_parquet(folder / "posts.parquet")
    write_project(folder, arguments.settings)
    print(build(folder))
    posts.to_parquet(folder / "posts.parquet")
    print(build(folder))
    print("posts placed onto each map:", placed_posts(folder))


if __name__ == "__main__":
    main()
