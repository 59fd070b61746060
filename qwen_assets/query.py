"""Questions people ask of the stored embeddings, answered in DuckDB, read-only.

Plain functions returning DataFrames; the command line formats them. Every read opens the
database people query (``storage.database``) read-only: builds never open that file (they
publish a new copy of it), so a query and a build never wait for each other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from qwen_assets.settings import Settings
from qwen_assets.storage import connect, table_exists

EXPORT_FORMATS = ("parquet", "csv")

# The convenience views, created by the pipeline next to the tables they join.
VIEWS = {
    "task_documents": """
        SELECT e.task, s.doc_id, s.category, s.text, s.preview, e.embedding,
               c.x_aligned AS x, c.y_aligned AS y, c.x AS x_raw, c.y AS y_raw
        FROM newsgroups_sample s
        JOIN task_embeddings e USING (doc_id)
        LEFT JOIN umap_coordinates c ON c.task = e.task AND c.doc_id = e.doc_id""",
    # The mean vector of each newsgroup in each task (a plain list: compare it to a document
    # with list_cosine_similarity(embedding::FLOAT[], centroid)).
    "category_centroids": """
        SELECT task, category, any_value(documents) AS documents,
               list(value ORDER BY dimension) AS centroid
        FROM (
            SELECT e.task, s.category, u.dimension, avg(u.value) AS value, count(*) AS documents
            FROM task_embeddings e
            JOIN newsgroups_sample s USING (doc_id),
            LATERAL (SELECT unnest(e.embedding::FLOAT[]) AS value,
                            unnest(range(1, len(e.embedding) + 1)) AS dimension) u
            GROUP BY e.task, s.category, u.dimension
        )
        GROUP BY task, category""",
}


class QueryError(ValueError):
    """A question the data cannot answer as asked; the message says what is allowed."""


def create_views(connection) -> None:
    for name, sql in VIEWS.items():
        connection.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def _reader(settings: Settings):
    return connect(
        settings.storage.database, read_only=True, wait_seconds=settings.storage.lock_wait_seconds
    )


def _check_built(connection) -> None:
    if not table_exists(connection, "task_embeddings"):
        raise QueryError("the database has no embeddings yet: run `qwen-assets build` first")


def _check_task(connection, task: str) -> None:
    _check_built(connection)
    stored = [
        row[0]
        for row in connection.execute(
            "SELECT DISTINCT task FROM task_embeddings ORDER BY task"
        ).fetchall()
    ]
    if task not in stored:
        raise QueryError(f"unknown task {task!r}; built tasks: {', '.join(stored) or 'none'}")


def _check_document(connection, doc_id: str) -> None:
    found = connection.execute(
        "SELECT count(*) FROM newsgroups_sample WHERE doc_id = ?", [doc_id]
    ).fetchall()
    if not found[0][0]:
        example = connection.execute(
            "SELECT doc_id FROM newsgroups_sample ORDER BY position LIMIT 1"
        ).fetchall()
        hint = f", e.g. {example[0][0]}" if example else ""
        raise QueryError(
            f"unknown document {doc_id!r}; ids look like split/group/number{hint} "
            "(see `qwen-assets export` or the newsgroups_sample table)"
        )


def _check_k(k: int) -> None:
    if k < 1:
        raise QueryError(f"-k must be at least 1, got {k}")


NEIGHBOURS_SQL = """
    SELECT b.doc_id, s.category,
           array_cosine_similarity(a.embedding, b.embedding) AS similarity, s.preview
    FROM task_embeddings a
    JOIN task_embeddings b ON b.task = a.task
    JOIN newsgroups_sample s ON s.doc_id = b.doc_id
    WHERE a.task = ? AND a.doc_id = ? AND ({self_filter})
    ORDER BY similarity DESC, b.doc_id
    LIMIT ?"""


def neighbours(
    settings: Settings, doc_id: str, task: str, k: int = 10, *, include_self: bool = True
) -> pd.DataFrame:
    """The ``k`` documents most cosine-similar to ``doc_id`` in ``task``'s space, ranked."""
    _check_k(k)
    with _reader(settings) as connection:
        _check_task(connection, task)
        _check_document(connection, doc_id)
        sql = NEIGHBOURS_SQL.format(self_filter="TRUE" if include_self else "b.doc_id <> a.doc_id")
        frame = connection.execute(sql, [task, doc_id, k]).df()
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def search(
    settings: Settings,
    text: str,
    task: str,
    k: int = 10,
    *,
    backend_name: str,
    api_key: str | None,
    log: logging.Logger,
) -> pd.DataFrame:
    """Embed ``text`` as ``task`` embeds its documents (same instruction, same cache) and
    rank the stored documents by cosine similarity to it."""
    from qwen_assets.embedding import build_backend, embed_texts

    if not text.strip():
        raise QueryError("the search text is empty; give a sentence or a few words")
    _check_k(k)
    if task not in settings.tasks:
        raise QueryError(f"unknown task {task!r}; configured tasks: {', '.join(settings.tasks)}")
    with _reader(settings) as connection:
        _check_task(connection, task)
        dimension = connection.execute(
            "SELECT len(embedding) FROM task_embeddings WHERE task = ? LIMIT 1", [task]
        ).fetchall()[0][0]
    backend = build_backend(backend_name, settings.embedding, api_key, log)
    vectors, _ = embed_texts(
        [text],
        settings.prompt_prefix(task),
        settings.embedding,
        backend,
        settings.storage.embedding_cache,
        log,
    )
    query = np.asarray(vectors[0], dtype=np.float32)
    if len(query) != dimension:
        raise QueryError(
            f"the query embeds to {len(query)} dimensions but {task!r} is stored with "
            f"{dimension}: rebuild the embeddings (`qwen-assets build`) after changing the model"
        )
    with _reader(settings) as connection:
        frame = connection.execute(
            f"""SELECT e.doc_id, s.category,
                       array_cosine_similarity(e.embedding, ?::FLOAT[{dimension}]) AS similarity,
                       s.preview
                FROM task_embeddings e JOIN newsgroups_sample s USING (doc_id)
                WHERE e.task = ? ORDER BY similarity DESC, e.doc_id LIMIT ?""",
            [query.tolist(), task, k],
        ).df()
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def compare(settings: Settings, doc_id: str, tasks: list[str], k: int = 10) -> pd.DataFrame:
    """Each of the document's neighbours in any of ``tasks``, with its rank in each task
    (empty where it is not among the top ``k``)."""
    if len(tasks) < 2:
        raise QueryError("--tasks needs at least two task names, e.g. --tasks default,topic")
    ranked = {
        task: neighbours(settings, doc_id, task, k, include_self=False).set_index("doc_id")
        for task in tasks
    }
    ids = list(dict.fromkeys(doc for frame in ranked.values() for doc in frame.index))
    rows = []
    for doc in ids:
        row: dict[str, object] = {"doc_id": doc}
        for task, frame in ranked.items():
            row[f"rank_{task}"] = int(frame.loc[doc, "rank"]) if doc in frame.index else None
        source = next(frame for frame in ranked.values() if doc in frame.index)
        row["category"] = source.loc[doc, "category"]
        row["in_all"] = all(doc in frame.index for frame in ranked.values())
        rows.append(row)
    frame = pd.DataFrame(rows)
    rank_columns = [f"rank_{task}" for task in tasks]
    frame[rank_columns] = frame[rank_columns].astype("Int64")
    return frame.sort_values(rank_columns, na_position="last").reset_index(drop=True)


def neighbourhood_summary(frame: pd.DataFrame, tasks: list[str], k: int) -> str:
    shared = int(frame["in_all"].sum())
    return f"{shared} of {k} neighbours shared by {' and '.join(tasks)} (Jaccard {shared / (2 * k - shared):.2f})"


def export(settings: Settings, task: str, output: Path, file_format: str) -> int:
    """Documents, category, text, task, embedding and x/y, one row per (task, document).
    Returns the number of rows written."""
    if file_format not in EXPORT_FORMATS:
        raise QueryError(
            f"unknown export format {file_format!r}; allowed: {', '.join(EXPORT_FORMATS)}"
        )
    with _reader(settings) as connection:
        if task == "all":
            _check_built(connection)
        else:
            _check_task(connection, task)
        output.parent.mkdir(parents=True, exist_ok=True)
        where = "" if task == "all" else "WHERE e.task = $task"
        select = f"""
            SELECT e.task, s.doc_id, s.category, s.text, c.x_aligned AS x, c.y_aligned AS y,
                   e.embedding
            FROM newsgroups_sample s JOIN task_embeddings e USING (doc_id)
            LEFT JOIN umap_coordinates c ON c.task = e.task AND c.doc_id = e.doc_id
            {where} ORDER BY e.task, s.position"""
        options = "FORMAT parquet" if file_format == "parquet" else "FORMAT csv, HEADER"
        temporary = output.with_name(f".{output.name}.partial")
        parameters = {} if task == "all" else {"task": task}
        # COPY answers with the number of rows it wrote.
        rows = connection.execute(
            f"COPY ({select}) TO '{_sql_string(temporary)}' ({options})", parameters
        ).fetchall()[0][0]
    temporary.replace(output)
    return rows


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")
