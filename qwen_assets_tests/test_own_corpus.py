"""A corpus of one's own: a Parquet or CSV file with other column names, with labels or
without, built end to end through the loopback server, grown and shrunk; and each bad file
refused with one line, nothing stored."""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwen_assets.cli import rebuild_stale
from qwen_assets.definitions import build_definitions
from qwen_assets.errors import CorpusError
from qwen_assets.orchestration.plan import project_plan
from qwen_assets.pipeline.corpus import draw_sample, load_raw_newsgroups, read_corpus_file
from qwen_assets.pipeline.projection import align
from qwen_assets.pipeline.storage import read_table
from qwen_assets.settings import FILE_OVERRIDES, parse_settings
from qwen_assets.testing import project_settings, write_settings
from qwen_assets_tests.conftest import build_project, files_digest
from qwen_assets_tests.test_site import Page

TASKS = {
    "default": {"instruction": ""},
    "sentiment": {
        "instruction": "Classify the sentiment of the given text as positive, negative, or neutral",
        "target": "sentiment",
    },
}
GROUPS = ["rec.autos", "sci.space"]
# An extra column's value as a hostile file would hold it: shown as text, never run.
HOSTILE = '<img src="data:," onerror="window.hostile = 1">'


@pytest.fixture(scope="module")
def posts(small_archive: str) -> pd.DataFrame:
    """110 posts of two groups, as someone's own table: other column names, an id column."""
    raw = load_raw_newsgroups(small_archive)
    chosen = raw[raw["category"].isin(GROUPS) & (raw["text"].str.strip().str.len() >= 100)]
    chosen = chosen.groupby("category").head(55)
    return pd.DataFrame(
        {
            "post_id": [f"p{number}" for number in range(len(chosen))],
            "body": chosen["text"].tolist(),
            "newsgroup": chosen["category"].tolist(),
        }
    )


def own_settings(root: Path, server, archive: str, corpus: dict) -> dict:
    raw = project_settings(root, server, archive)
    raw["corpus"] = corpus
    raw["tasks"] = TASKS
    return raw


def corpus_settings(**corpus):
    return parse_settings({"corpus": corpus, "tasks": TASKS}).corpus


def requests_of(project, server) -> tuple[int, object]:
    server.reset()
    report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
    assert report.succeeded, report.failure
    return len(server.received), report


def stored_vectors(project) -> dict[tuple[str, str], list[float]]:
    rows = read_table(project.database, "SELECT task, doc_id, embedding FROM task_embeddings")
    return {(r.task, r.doc_id): list(r.embedding) for r in rows.itertuples()}


def with_none(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values as None (DuckDB and CSV give NaN), as the payload's JSON has them."""
    return frame.astype(object).where(frame.notna(), None)


def stored_places(project) -> pd.DataFrame:
    return read_table(
        project.database,
        "SELECT task, doc_id, x, y, x_aligned, y_aligned, placed_at FROM umap_coordinates",
    ).set_index(["task", "doc_id"])


def test_a_parquet_corpus_grows_at_the_cost_of_its_new_rows_and_shrinks_for_free(
    tmp_path, posts, server, archive
):
    """Labels and ids from the file's own columns. Appending 10 % of rows embeds exactly
    those (per task, ceil(new/32) requests) and leaves every other post's vectors and place
    on every map as they were, the new posts placed (and said so); the planner says why the
    corpus is stale; removing rows costs nothing and moves no post."""
    source = tmp_path / "posts.parquet"
    first = posts.iloc[:100]
    first.to_parquet(source)
    corpus = {
        "source": str(source),
        "text_column": "body",
        "label_column": "newsgroup",
        "id_column": "post_id",
        "per_category": "all",
    }
    with ExitStack() as stack:
        server.reset()
        project = build_project(tmp_path, own_settings(tmp_path, server, archive, corpus), stack)
        per_map = math.ceil(project.documents() / 32)
        assert len(server.received) == len(TASKS) * per_map
        sample = read_table(project.database, "SELECT doc_id, category FROM newsgroups_sample")
        assert set(sample["doc_id"]) <= set(first["post_id"])
        assert set(sample["category"]) == set(GROUPS)
        before, places = stored_vectors(project), stored_places(project)
        assert places["placed_at"].isna().all(), "a first build lays every post out"

        posts.iloc[:110].to_parquet(source)  # ten rows appended
        reasons = project_plan(
            build_definitions(project.settings()), project.instance, project.settings()
        ).reasons
        assert reasons["raw_newsgroups"] == "corpus_file changed"
        requests, _ = requests_of(project, server)
        new = project.documents() - len(sample)
        assert 0 < new <= 10
        assert requests == len(TASKS) * math.ceil(new / 32)
        after = stored_vectors(project)
        assert {key: after[key] for key in before} == before, "old posts keep their vectors"
        grown = stored_places(project)
        coordinates = ["x", "y", "x_aligned", "y_aligned"]
        assert grown.loc[places.index, coordinates].equals(places[coordinates])
        placed = grown.drop(index=places.index)
        assert len(placed) == new * len(TASKS)
        assert placed["placed_at"].notna().all()
        assert grown.loc[places.index, "placed_at"].isna().all()
        payload = json.loads((tmp_path / "site" / "data.json").read_text())
        new_ids = set(placed.index.get_level_values("doc_id"))
        for task in payload["tasks"]:
            shown = {payload["documents"]["id"][int(index)] for index in task["placed"]}
            assert shown == new_ids, "the site says which posts were placed"
        assert project_plan(
            build_definitions(project.settings()), project.instance, project.settings()
        ).empty

        posts.iloc[5:110].to_parquet(source)  # five rows removed
        requests, _ = requests_of(project, server)
        assert requests == 0
        left = read_table(project.database, "SELECT doc_id FROM task_embeddings")
        assert not set(left["doc_id"]) & set(posts["post_id"].iloc[:5])
        shrunk = stored_places(project)
        assert shrunk.equals(grown.loc[shrunk.index]), "no post moves when others leave"

        # The reference map projected anew (its instruction edited): the other map keeps
        # its layout, and is aligned onto the new reference as a whole, not left on the old.
        raw = project.raw
        raw["tasks"]["default"]["instruction"] = "Represent the given text"
        write_settings(project.settings_path, raw)
        requests_of(project, server)
        edited = stored_places(project)
        assert edited.loc["sentiment", ["x", "y"]].equals(shrunk.loc["sentiment", ["x", "y"]])
        reference = edited.loc["default", ["x", "y"]].to_numpy()
        refit = align(edited.loc["sentiment", ["x", "y"]].to_numpy(), reference).coordinates
        assert np.allclose(edited.loc["sentiment", ["x_aligned", "y_aligned"]], refit)


def test_a_csv_corpus_without_labels_is_coloured_by_cluster_and_says_no_labels(
    tmp_path,
    posts,
    server,
    archive,
    browser,
):
    """No label column, no id column: ids come from the texts, the sample is drawn at random,
    the figures about labels are null (not a number), and the site colours posts by the
    clusters of the reference map, the posts in none in grey, and says "no labels". Its
    extra columns are stored beside each post and shown in the post's panel, as text."""
    source = tmp_path / "texts.csv"
    own = posts[["body"]].rename(columns={"body": "message"})
    own["author"] = [f"writer {n % 7}" if n % 7 else HOSTILE for n in range(len(own))]
    own["link"] = [f"https://example.org/{n}" if n % 3 else None for n in range(len(own))]
    own.to_csv(source, index=False)
    corpus = {
        "source": str(source),
        "text_column": "message",
        "sample_size": 60,
        "extra_columns": ["author", "link"],
    }
    with ExitStack() as stack:
        server.reset()
        project = build_project(tmp_path, own_settings(tmp_path, server, archive, corpus), stack)
        assert project.documents() == 60
        assert len(server.received) == len(TASKS) * math.ceil(60 / 32)
        stored = read_table(
            project.database,
            "SELECT doc_id, text, extras->>'$.author' AS author, extras->>'$.link' AS link "
            "FROM newsgroups_sample ORDER BY position",
        )
        stored[["author", "link"]] = with_none(stored[["author", "link"]])
        cleaned = own["message"].str.replace(r"\s+", " ", regex=True).str.strip().str[:5000]
        by_text = own.assign(text=cleaned).drop_duplicates("text").set_index("text")
        expected = with_none(by_text.loc[stored["text"], ["author", "link"]])
        assert stored[["author", "link"]].values.tolist() == expected.values.tolist()
        quality = read_table(project.database, "SELECT * FROM task_quality")
        for figure in ("knn_accuracy", "silhouette", "probe_accuracy", "v_measure"):
            assert quality[figure].isna().all(), figure
        assert quality["trustworthiness"].between(0, 1).all()
        assert quality["predicts_sentiment"].notna().all(), "the properties need no labels"
        payload = json.loads((tmp_path / "site" / "data.json").read_text())
        assert payload["categories_from"] == "the default map"
        clusters = read_table(
            project.database, "SELECT DISTINCT label FROM map_clusters WHERE task = 'default'"
        )
        assert set(payload["categories"]) <= {*clusters["label"], payload["unclustered"]}
        assert len(payload["categories"]) >= 2

        page = Page(
            browser, (tmp_path / "site").as_uri() + "/", viewport={"width": 1280, "height": 900}
        )
        page.open()
        assert page.errors == []
        assert page.page.inner_text('[data-colour="category"]') == "Colour by cluster"
        cells = page.page.locator("#quality-rows tr td:nth-child(2)").all_inner_texts()
        assert cells == ["no labels"] * len(TASKS)
        colours = page.page.evaluate(
            "() => document.getElementById('plot').data"
            ".filter((trace) => trace.legendgroup !== undefined || trace.name)"
            ".map((trace) => [trace.name, trace.marker && trace.marker.color])"
        )
        by_name = {name: colour for name, colour in colours if name in payload["categories"]}
        assert set(by_name) == set(payload["categories"])
        grey = by_name.pop(payload["unclustered"], None)
        assert grey is not None and grey not in by_name.values(), "no cluster: a colour apart"
        assert len(set(by_name.values())) == len(by_name), "each cluster its own colour"
        extra = payload["documents"]["extra"]
        assert extra == {"author": stored["author"].tolist(), "link": stored["link"].tolist()}
        for doc in [
            next(d for d, link in enumerate(extra["link"]) if link is not None),
            next(d for d, link in enumerate(extra["link"]) if link is None),
        ]:
            page.open(f"index.html#task=default&doc={stored['doc_id'][doc]}")
            page.page.locator("#doc-extra").wait_for(state="visible")
            shown = {"author": extra["author"][doc], "link": extra["link"][doc]}
            shown = {name: value for name, value in shown.items() if value is not None}
            names = page.page.locator("#doc-extra dt").all_inner_texts()
            values = page.page.locator("#doc-extra dd").all_inner_texts()
            assert dict(zip(names, values, strict=True)) == shown
        assert page.errors == []
        page.context.close()

        hostile = extra["author"].index(HOSTILE)  # a seventh of the rows: some are drawn
        page = Page(browser, (tmp_path / "site").as_uri() + "/")
        page.open(f"index.html#task=default&doc={stored['doc_id'][hostile]}")
        page.page.locator("#doc-extra").wait_for(state="visible")
        assert page.page.locator("#doc-extra dd").first.inner_text() == HOSTILE
        assert page.page.locator("#panel img").count() == 0
        assert page.page.evaluate("window.hostile") is None
        page.context.close()

        raw = project.raw
        raw["corpus"]["extra_columns"] = ["link"]
        write_settings(project.settings_path, raw)
        requests, _ = requests_of(project, server)
        assert requests == 0, "an extra column changes no vector"
        payload = json.loads((tmp_path / "site" / "data.json").read_text())
        assert payload["documents"]["extra"] == {"link": extra["link"]}


def test_the_ui_shows_the_sample_stale_when_the_file_changes(tmp_path, posts, server, archive):
    """A real `dg dev` over a built file corpus: fresh as built; rows appended to the file,
    the observing sensor records the file's new version and the UI (Dagster's own stale
    status, through its GraphQL API) shows the corpus table stale; rebuilt from the UI, the
    sample is stale; nothing else is, and nothing is built behind the user's back."""
    from qwen_assets_tests.test_live import PACKAGE_DAGSTER_YAML, DagsterUI, wait_until

    source = tmp_path / "posts.parquet"
    posts.iloc[:60].to_parquet(source)
    corpus = {"source": str(source), "text_column": "body", "id_column": "post_id"}
    with ExitStack() as stack:
        raw = own_settings(tmp_path, server, archive, corpus)
        raw["automation"] = {"sensor_interval_seconds": 2}
        project = build_project(tmp_path, raw, stack)
        shutil.copyfile(PACKAGE_DAGSTER_YAML, project.home / "dagster.yaml")
        environ = {
            **os.environ,
            "QWEN_ASSETS_SETTINGS": str(project.settings_path),
            "DAGSTER_HOME": str(project.home),
            "DAGSTER_DISABLE_TELEMETRY": "yes",
        }
        ui = DagsterUI(environ, tmp_path / "dg-dev.log")
        stack.callback(ui.stop)
        ui.stop_sensor("rebuild_stale_assets")  # to read the UI before anything is rebuilt
        corpus_assets = ["raw_newsgroups", "newsgroups_sample"]
        assert ui.stale_assets([*corpus_assets, "document_properties", "site_data"]) == []
        built = len(ui.runs())  # the build's own runs

        posts.iloc[:66].to_parquet(source)
        wait_until(
            lambda: ui.stale_assets(corpus_assets) == ["raw_newsgroups"],
            60,
            "the UI shows the corpus stale",
        )
        assert len(ui.runs()) == built, "nothing was built: the rebuild sensor is off"
        # Dagster marks an asset stale once an input is rebuilt with new data, not before
        # (it does not pass an input's staleness on): the corpus table rebuilt from the UI,
        # the sample is stale, and nothing after it yet.
        ran = ui.launch("build_assets", ["raw_newsgroups"])
        wait_until(
            lambda: [run for run in ui.runs() if run["runId"] == ran and run["endTime"]],
            120,
            "the corpus table's run ends",
        )
        assert {run["status"] for run in ui.runs()} == {"SUCCESS"}
        assert ui.stale_assets(corpus_assets) == ["newsgroups_sample"]
        assert ui.stale_assets(["document_properties", "site_data"]) == []


def test_the_docs_example_builds_a_second_corpus_and_grows_it(tmp_path, server, archive):
    """docs/examples/second_corpus.py as a person runs it, from the settings they have (here
    the loopback server's): a Parquet corpus with other column names and no labels, built,
    grown by 10 %: only the new posts are embedded and placed, on every map; the variables
    that point the person's own project's files elsewhere do not reach it."""
    import subprocess
    import sys

    from qwen_assets_tests.conftest import REPO

    example = REPO / "docs" / "examples" / "second_corpus.py"
    base = write_settings(tmp_path / "mine.toml", own_settings(tmp_path, server, archive, {}))
    folder = tmp_path / "second"
    server.reset()
    taken = tmp_path / "taken"  # a folder holding someone's files: refused, left as it was
    taken.mkdir()
    (taken / "posts.parquet").write_text("theirs")
    refused = subprocess.run(
        [sys.executable, str(example), archive, str(taken), "--settings", str(base)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert refused.stderr.strip().endswith(
        "holds files this example did not write: name a new folder"
    )
    assert [p.name for p in taken.iterdir()] == ["posts.parquet"]
    assert (taken / "posts.parquet").read_text() == "theirs"
    shutil.rmtree(taken)

    theirs = tmp_path / "theirs"  # where the person's own project's files are
    exported = {variable: str(theirs / variable.lower()) for variable in FILE_OVERRIDES}
    done = subprocess.run(
        [sys.executable, str(example), archive, str(folder), "--settings", str(base)],
        env={**os.environ, **exported},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    first, grown = 100, 110
    assert len(server.received) == len(TASKS) * (
        math.ceil(first / 32) + math.ceil((grown - first) / 32)
    ), "the second build embedded only the new posts"
    assert f"posts placed onto each map: { {task: grown - first for task in sorted(TASKS)} }" in (
        done.stdout
    )
    sample = read_table(
        str(folder / "second.duckdb"),
        "SELECT category, extras->>'$.newsgroup' AS newsgroup FROM newsgroups_sample",
    )
    assert len(sample) == grown and sample["category"].isna().all(), "no labels"
    assert sample["newsgroup"].nunique() == 3, "the group, as an extra column"
    payload = json.loads((folder / "site" / "data.json").read_text())
    assert payload["categories_from"] == "the default map"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.toml", "second"]


@pytest.mark.parametrize(
    ("write", "corpus", "said"),
    [
        (
            lambda frame, path: frame.to_parquet(path),
            {"text_column": "text"},
            "has no column corpus.text_column 'text'; its columns: post_id, body, newsgroup",
        ),
        (
            lambda frame, path: frame.assign(
                body=frame["body"].where(frame.index != 3, " ")
            ).to_parquet(path),
            {},
            "row 4: nothing in corpus.text_column 'body'",
        ),
        (
            lambda frame, path: frame.assign(post_id="same").to_parquet(path),
            {"id_column": "post_id"},
            "id 'same' (corpus.id_column 'post_id') is on",
        ),
        (
            lambda frame, path: path.write_bytes(b"PAR1 not really parquet"),
            {},
            "as Parquet (",
        ),
        (
            lambda frame, path: None,
            {},
            "matches no file",
        ),
        (
            lambda frame, path: frame.to_parquet(path),
            {"extra_columns": ["author"]},
            "has no column corpus.extra_columns 'author'; its columns: post_id, body, newsgroup",
        ),
    ],
    ids=[
        "missing column",
        "empty text",
        "duplicate id",
        "unreadable file",
        "no file",
        "missing extra column",
    ],
)
def test_each_bad_corpus_file_gets_one_line(tmp_path, posts, write, corpus, said):
    source = tmp_path / "posts.parquet"
    write(posts.iloc[:20], source)
    settings = corpus_settings(**{"source": str(source), "text_column": "body", **corpus})
    with pytest.raises(CorpusError) as refused:
        read_corpus_file(settings)
    message = str(refused.value)
    assert said in message
    assert "\n" not in message


def test_a_bad_file_fails_the_build_and_stores_nothing(tmp_path, posts, server, archive):
    """A corpus file damaged after a good build: the build fails with the one line, and the
    tables, the site and the cache are as they were."""
    source = tmp_path / "posts.jsonl"
    posts.iloc[:40].to_json(source, orient="records", lines=True)
    corpus = {"source": str(source), "text_column": "body", "label_column": "newsgroup"}
    with ExitStack() as stack:
        project = build_project(tmp_path, own_settings(tmp_path, server, archive, corpus), stack)
        source.write_text('{"body": "a post", "newsgroup": "x"}\n{"body": \n')
        kept = {name: digest for name, digest in files_digest(tmp_path).items()}
        report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
        assert not report.succeeded
        assert f"could not read {source} as JSON lines" in report.failure
        changed = {
            name
            for name, digest in files_digest(tmp_path).items()
            if kept.get(name) != digest and not name.endswith(".wal")
        }
        assert not changed - {"posts.jsonl"}


def test_the_same_seed_draws_the_same_sample_and_growth_keeps_it(posts):
    """A post is drawn by a hash of its id: the same seed, the same posts; rows appended
    replace a drawn post only by outranking it, so the new sample is the old one's posts
    and new ones, and per label the counts hold."""
    settings = corpus_settings(
        source="x.parquet",
        text_column="body",
        label_column="newsgroup",
        id_column="post_id",
        per_category=20,
    )

    def drawn(frame: pd.DataFrame, corpus=settings) -> pd.DataFrame:
        raw = frame.rename(columns={"post_id": "doc_id", "body": "text", "newsgroup": "category"})
        raw = raw.assign(corpus_position=range(len(raw)), split="x.parquet")
        return draw_sample(raw, corpus).frame

    small, grown = drawn(posts.iloc[:80]), drawn(posts)
    assert drawn(posts.iloc[:80]).equals(small)
    assert set(grown["doc_id"]) <= set(small["doc_id"]) | set(posts["post_id"].iloc[80:])
    assert grown["category"].value_counts().to_dict() == {group: 20 for group in GROUPS}
    other_seed = corpus_settings(**{**settings.model_dump(), "random_state": 7})
    assert set(drawn(posts, other_seed)["doc_id"]) != set(grown["doc_id"])
