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

from qwen_assets.errors import QueryError
from qwen_assets.pipeline.embedding.identity import prompt_prefix
from qwen_assets.pipeline.storage import connect, table_exists
from qwen_assets.settings import Settings, SettingsError

EXPORT_FORMATS = ("parquet", "csv")
# A text a spreadsheet would run as a formula (=, +, -, @, a tab or a return first) gets a
# quote in front, as the site's own CSV export does.
SPREADSHEET_SAFE_TEXT = (
    r"CASE WHEN regexp_matches(s.text, '^[=+\-@\t\r]') THEN '''' || s.text ELSE s.text END"
)

# The convenience views, created by the pipeline next to the tables they join.
VIEWS = {
    "task_documents": """
        SELECT e.variant, e.task, s.doc_id, s.category, s.text, s.preview, e.embedding,
               c.x_aligned AS x, c.y_aligned AS y, c.x AS x_raw, c.y AS y_raw
        FROM newsgroups_sample s
        JOIN task_embeddings e USING (doc_id)
        LEFT JOIN umap_coordinates c
            ON c.variant = e.variant AND c.task = e.task AND c.doc_id = e.doc_id""",
    # The mean vector of each newsgroup in each task (a plain list: compare it to a document
    # with list_cosine_similarity(embedding::FLOAT[], centroid)).
    "category_centroids": """
        SELECT variant, task, category, any_value(documents) AS documents,
               list(value ORDER BY dimension) AS centroid
        FROM (
            SELECT e.variant, e.task, s.category, u.dimension, avg(u.value) AS value,
                   count(*) AS documents
            FROM task_embeddings e
            JOIN newsgroups_sample s USING (doc_id),
            LATERAL (SELECT unnest(e.embedding::FLOAT[]) AS value,
                            unnest(range(1, len(e.embedding) + 1)) AS dimension) u
            GROUP BY e.variant, e.task, s.category, u.dimension
        )
        GROUP BY variant, task, category""",
}


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


def _check_task(connection, task: str, variant: str) -> None:
    _check_built(connection)
    stored = connection.execute(
        "SELECT DISTINCT variant, task FROM task_embeddings ORDER BY variant, task"
    ).fetchall()
    if (variant, task) in stored:
        return
    variants = sorted({row[0] for row in stored})
    if variant not in variants:
        raise QueryError(f"unknown variant {variant!r}; built variants: {', '.join(variants)}")
    tasks = [row[1] for row in stored if row[0] == variant]
    raise QueryError(f"unknown task {task!r}; built tasks: {', '.join(tasks) or 'none'}")


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


def _variant(settings: Settings, variant: str | None) -> str:
    try:
        return settings.check_variant(variant)
    except SettingsError as error:
        raise QueryError(str(error)) from None


def _check_k(k: int) -> None:
    if k < 1:
        raise QueryError(f"-k must be at least 1, got {k}")


# Variants may store vectors of different sizes in one list column (FLOAT[]); within one
# variant and task the sizes agree, and the list form of cosine similarity takes both forms.
NEIGHBOURS_SQL = """
    SELECT b.doc_id, s.category,
           list_cosine_similarity(a.embedding::FLOAT[], b.embedding::FLOAT[]) AS similarity,
           s.preview
    FROM task_embeddings a
    JOIN task_embeddings b ON b.variant = a.variant AND b.task = a.task
    JOIN newsgroups_sample s ON s.doc_id = b.doc_id
    WHERE a.variant = ? AND a.task = ? AND a.doc_id = ? AND ({self_filter})
    ORDER BY similarity DESC, b.doc_id
    LIMIT ?"""


def neighbours(
    settings: Settings,
    doc_id: str,
    task: str,
    k: int = 10,
    *,
    include_self: bool = True,
    variant: str | None = None,
) -> pd.DataFrame:
    """The ``k`` documents most cosine-similar to ``doc_id`` in ``task``'s space (as
    ``variant``, default the reference, embeds it), ranked."""
    _check_k(k)
    variant = _variant(settings, variant)
    with _reader(settings) as connection:
        _check_task(connection, task, variant)
        _check_document(connection, doc_id)
        sql = NEIGHBOURS_SQL.format(self_filter="TRUE" if include_self else "b.doc_id <> a.doc_id")
        frame = connection.execute(sql, [variant, task, doc_id, k]).df()
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def search(
    settings: Settings,
    text: str,
    task: str,
    k: int = 10,
    *,
    log: logging.Logger,
    variant: str | None = None,
    against: str | None = None,
) -> pd.DataFrame:
    """Embed ``text`` as ``task`` embeds its documents (same instruction, model and cache, as
    ``variant`` embeds them) and rank the stored documents of ``against`` (default: ``task``)
    by cosine similarity to it. ``against="default"`` is how Qwen3-Embedding retrieves: the
    query carries the instruction, the documents were embedded without one."""
    from qwen_assets.pipeline.embedding import embed_texts, open_backend, resolve_backend

    if not text.strip():
        raise QueryError("the search text is empty; give a sentence or a few words")
    _check_k(k)
    documents = against or task
    for name in dict.fromkeys([task, documents]):
        if name not in settings.prompts:
            raise QueryError(
                f"unknown task {name!r}; configured tasks: {', '.join(settings.prompt_names)}"
            )
    variant = _variant(settings, variant)
    with _reader(settings) as connection:
        _check_task(connection, documents, variant)
        dimension = connection.execute(
            "SELECT len(embedding) FROM task_embeddings WHERE variant = ? AND task = ? LIMIT 1",
            [variant, documents],
        ).fetchall()[0][0]
    embedding = settings.embedding_of(variant)
    name, _ = resolve_backend(embedding)
    backend = open_backend(name, embedding, log)
    vectors, _ = embed_texts(
        [text],
        prompt_prefix(settings, task, variant),
        embedding,
        backend,
        settings.storage.embedding_cache,
        log,
    )
    query = np.asarray(vectors[0], dtype=np.float32)
    if len(query) != dimension:
        raise QueryError(
            f"the query embeds to {len(query)} dimensions but {documents!r} is stored with "
            f"{dimension}: rebuild the embeddings (`qwen-assets build`) after changing the model"
        )
    with _reader(settings) as connection:
        frame = connection.execute(
            """SELECT e.doc_id, s.category,
                      list_cosine_similarity(e.embedding::FLOAT[], ?::FLOAT[]) AS similarity,
                      s.preview
               FROM task_embeddings e JOIN newsgroups_sample s USING (doc_id)
               WHERE e.variant = ? AND e.task = ? ORDER BY similarity DESC, e.doc_id LIMIT ?""",
            [query.tolist(), variant, documents, k],
        ).df()
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def compare(
    settings: Settings, doc_id: str, tasks: list[str], k: int = 10, variant: str | None = None
) -> pd.DataFrame:
    """Each of the document's neighbours in any of ``tasks``, with its rank in each task
    (empty where it is not among the top ``k``). A task may be named ``variant/task`` to
    compare variants; a bare name is the task as ``variant`` (default: the reference)
    embeds it."""
    if len(tasks) < 2:
        raise QueryError(
            "--tasks needs at least two task names, e.g. --tasks default,topic "
            "(or variant/task names, e.g. --tasks official/topic,demo/topic)"
        )
    ranked = {}
    for name in tasks:
        chosen, _, task = name.rpartition("/")
        ranked[name] = neighbours(
            settings, doc_id, task, k, include_self=False, variant=chosen or variant
        ).set_index("doc_id")
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


def effects(
    settings: Settings, task: str | None = None, variant: str | None = None
) -> pd.DataFrame:
    """Is it the instruction? Each task's figures (its target's first) beside the spread over
    its paraphrases and its controls' values, from table instruction_effects. ``task`` None:
    every task with controls, its target's figure only."""
    variant = _variant(settings, variant)
    with _reader(settings) as connection:
        if not table_exists(connection, "instruction_effects"):
            raise QueryError(
                "the database has no instruction_effects table yet: run `qwen-assets build`"
            )
        frame = connection.execute(
            """SELECT task, figure, instruction, paraphrase_min, paraphrase_max, paraphrases,
                      shuffled, generic, beyond_shuffled, beyond_generic, within_controls
               FROM instruction_effects
               WHERE variant = ? AND (task = ? OR (? IS NULL AND is_target))""",
            [variant, task, task],
        ).df()
    if frame.empty:
        tasks = ", ".join(t for t, p in settings.tasks.items() if p.instruction)
        raise QueryError(
            f"no figures for {task or 'any task'} beside paraphrases or controls: turn them on "
            "([controls] enabled = true) and run `qwen-assets build`; tasks with an "
            f"instruction: {tasks or 'none'}"
        )
    order = {name: position for position, name in enumerate(settings.task_names)}
    return frame.sort_values("task", key=lambda names: names.map(order), kind="stable")


def effects_summary(frame: pd.DataFrame) -> str:
    """One line per task on its target: beyond its controls, or within them."""
    lines = []
    for row in frame.itertuples():
        if pd.isna(row.within_controls) or not row.figure.startswith("predicts_"):
            continue
        target = row.figure.removeprefix("predicts_")
        verdict = "no more than a control does" if row.within_controls else "beyond its controls"
        lines.append(f"{row.task}'s instruction moves {target} {verdict}")
    return "\n".join(lines)


def neighbourhood_summary(frame: pd.DataFrame, tasks: list[str], k: int) -> str:
    """How many neighbours every task shares; Jaccard: those over all the neighbours listed."""
    shared = int(frame["in_all"].sum())
    jaccard = shared / len(frame) if len(frame) else 0.0
    return f"{shared} of {k} neighbours shared by {' and '.join(tasks)} (Jaccard {jaccard:.2f})"


def export(
    settings: Settings,
    task: str,
    output: Path,
    file_format: str,
    variant: str | None = None,
    *,
    force: bool = False,
) -> int:
    """Documents, category, text, variant, task, embedding and x/y, one row per (variant,
    task, document): one task (or "all") of ``variant`` (default: the reference; "all":
    every variant). An existing file is replaced only with ``force``. In CSV, a text that a
    spreadsheet would run as a formula starts with a quote. Returns the rows written."""
    if file_format not in EXPORT_FORMATS:
        raise QueryError(
            f"unknown export format {file_format!r}; allowed: {', '.join(EXPORT_FORMATS)}"
        )
    if output.is_dir():
        raise QueryError(
            f"{output} is a folder: name the file to write, e.g. {output / 'maps'}.{file_format}"
        )
    if output.exists() and not force:
        raise QueryError(f"{output} exists: pass --force to replace it")
    every_variant = variant == "all"
    variant = None if every_variant else _variant(settings, variant)
    with _reader(settings) as connection:
        if task == "all":
            _check_built(connection)
        else:  # every variant embeds the same tasks: the reference's name them
            _check_task(connection, task, variant or settings.reference_variant)
        output.parent.mkdir(parents=True, exist_ok=True)
        parameters = {
            **({} if task == "all" else {"task": task}),
            **({} if every_variant else {"variant": variant}),
        }
        where = " AND ".join(f"e.{name} = ${name}" for name in parameters)
        text = "s.text" if file_format == "parquet" else SPREADSHEET_SAFE_TEXT
        select = f"""
            SELECT e.variant, e.task, s.doc_id, s.category, {text} AS text,
                   c.x_aligned AS x, c.y_aligned AS y, e.embedding
            FROM newsgroups_sample s JOIN task_embeddings e USING (doc_id)
            LEFT JOIN umap_coordinates c
                ON c.variant = e.variant AND c.task = e.task AND c.doc_id = e.doc_id
            {"WHERE " + where if where else ""} ORDER BY e.variant, e.task, s.position"""
        options = "FORMAT parquet" if file_format == "parquet" else "FORMAT csv, HEADER"
        temporary = output.with_name(f".{output.name}.partial")
        try:
            # COPY answers with the number of rows it wrote.
            rows = connection.execute(
                f"COPY ({select}) TO '{_sql_string(temporary)}' ({options})", parameters
            ).fetchall()[0][0]
            temporary.replace(output)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return rows


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")
