"""The corpus stage: load the posts (20 Newsgroups, or a user's own file) and draw the sample.

20 Newsgroups gives the published demo's stratified sample, document for document. A file
(Parquet, CSV or JSON lines, read by DuckDB) gives its rows, drawn per label, at random or
whole. All are plain functions of their inputs so they can be tested without Dagster.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qwen_assets.errors import CorpusError
from qwen_assets.settings import CorpusSettings

REMOVE = ("headers", "footers", "quotes")
ARCHIVE_FOLDERS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}
RAW_COLUMNS = ["doc_id", "corpus_position", "split", "category", "text"]
SAMPLE_COLUMNS = ["position", "doc_id", "category", "text", "preview"]
# A file corpus with corpus.extra_columns set has one more column, after these: each row's
# extra columns as a JSON object. Absent otherwise, so the built-in corpus's tables (and their
# versions) are what they were.
EXTRAS = "extras"


@dataclass(frozen=True)
class RawCorpus:
    frame: pd.DataFrame  # RAW_COLUMNS
    # Rows left out because their text repeats an earlier row's (a file without an id column).
    repeated_texts: int = 0


def load_corpus(corpus: CorpusSettings) -> RawCorpus:
    """Every post of the configured source, before sampling."""
    if corpus.from_file:
        return read_corpus_file(corpus)
    return RawCorpus(load_raw_newsgroups(corpus.archive))


def load_raw_newsgroups(archive: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """All 18,846 posts (train then test, each in the archive's order), with headers,
    footers and quotes removed.

    With ``archive`` (a local ``20news-bydate.tar.gz``) the posts are read from it and nothing
    is downloaded; without, scikit-learn's ``fetch_20newsgroups`` downloads them. Both give the
    same texts: the archive is read with scikit-learn's ``load_files`` and cleaned by the rules
    ``fetch_20newsgroups`` applies (see ``clean``), which the tests hold against it.
    """
    if archive is not None:
        return read_archive(Path(archive))
    from sklearn.datasets import fetch_20newsgroups

    try:
        bunch = fetch_20newsgroups(
            subset="all", remove=REMOVE, shuffle=False, download_if_missing=True
        )
    except Exception as error:  # the download fails in many ways; all mean the same to a user
        reason = str(getattr(error, "reason", None) or error).strip() or type(error).__name__
        raise CorpusError(
            f"could not download 20 Newsgroups (20news-bydate.tar.gz, 14 MB, through "
            f"scikit-learn: {reason}); on a machine without internet, set "
            "QWEN_ASSETS_NEWSGROUPS_ARCHIVE (or corpus.archive) to a local copy of it"
        ) from None
    return raw_frame(bunch.filenames, bunch.data, [bunch.target_names[t] for t in bunch.target])


def raw_frame(filenames, texts, categories) -> pd.DataFrame:
    doc_ids = [_doc_id(Path(name)) for name in filenames]
    frame = pd.DataFrame(
        {
            "doc_id": doc_ids,
            "corpus_position": np.arange(len(doc_ids), dtype=np.int32),
            "split": [doc_id.split("/", 1)[0] for doc_id in doc_ids],
            "category": list(categories),
            "text": list(texts),
        }
    )
    return frame[RAW_COLUMNS]


def _doc_id(path: Path) -> str:
    """``train/sci.med/59207``: the post's place in the archive, the same on every machine."""
    split = path.parent.parent.name.rsplit("-", 1)[-1]
    return f"{split}/{path.parent.name}/{path.name}"


# What fetch_20newsgroups(remove=("headers", "footers", "quotes")) removes, in its order.
QUOTE_LINE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def clean(text: str) -> str:
    """A post without its headers (everything before the first blank line), its signature
    (after the last line that is blank or dashes, unless that is the first line) and its
    quoted lines (starting with > or |, or introducing a quote: "... writes:")."""
    text = text.partition("\n\n")[2]
    lines = text.strip().split("\n")
    for number in range(len(lines) - 1, 0, -1):
        if lines[number].strip().strip("-") == "":
            text = "\n".join(lines[:number])
            break
    return "\n".join(line for line in text.split("\n") if not QUOTE_LINE.search(line))


# A post's place in 20news-bydate.tar.gz: split folder, newsgroup folder, number.
ARCHIVE_MEMBER = re.compile(r"20news-bydate-(train|test)/([a-z0-9.+-]+)/(\d+)")


def read_archive(archive: Path) -> pd.DataFrame:
    """The posts of a local 20news-bydate.tar.gz, cleaned (see ``load_raw_newsgroups``).

    Read in memory, nothing extracted: writing its 18,846 small files to disk took 6 to 15 s
    on a test machine, reading them from the stream takes under one. Anything in the archive
    but a post or a folder is refused, never written. The order is scikit-learn's: its
    ``load_files`` lists each split's folders and files sorted by name, then shuffles them
    with ``random_state=0``, and ``fetch_20newsgroups`` keeps that order (the tests hold the
    sample against scikit-learn's own reading of the archive, text for text).
    """
    from sklearn.utils import check_random_state

    if not archive.is_file():
        raise CorpusError(
            f"the 20 Newsgroups archive {archive} does not exist "
            "(QWEN_ASSETS_NEWSGROUPS_ARCHIVE or corpus.archive must name 20news-bydate.tar.gz)"
        )
    posts: dict[str, dict[str, bytes]] = {split: {} for split in ARCHIVE_FOLDERS}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                found = ARCHIVE_MEMBER.fullmatch(member.name) if member.isfile() else None
                if found is None and not member.isdir():
                    raise CorpusError(
                        f"the archive {archive} holds {member.name!r}, which is not a post of "
                        "20news-bydate (20news-bydate-SPLIT/GROUP/NUMBER): nothing was read"
                    )
                if found is not None:
                    split, group, number = found.groups()
                    posts[split][f"{group}/{number}"] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise CorpusError(
            f"the 20 Newsgroups archive {archive} is not a readable .tar.gz ({error})"
        ) from None
    if not all(posts.values()):
        raise CorpusError(
            f"the archive {archive} does not hold the folders "
            f"{' and '.join(ARCHIVE_FOLDERS.values())}: is it 20news-bydate.tar.gz?"
        )
    filenames, texts, categories = [], [], []
    for split, folder in ARCHIVE_FOLDERS.items():
        names = sorted(posts[split], key=lambda name: tuple(name.split("/")))
        order = np.arange(len(names))
        check_random_state(0).shuffle(order)
        for name in (names[index] for index in order):
            filenames.append(f"{folder}/{name}")
            texts.append(clean(posts[split][name].decode("latin1")))
            categories.append(name.split("/")[0])
    return raw_frame(filenames, texts, categories)


@dataclass(frozen=True)
class Sample:
    frame: pd.DataFrame
    # Groups that had fewer documents than asked for, with how many they had.
    short_categories: dict[str, int] = field(default_factory=dict)


def draw_sample(raw: pd.DataFrame, corpus: CorpusSettings) -> Sample:
    """The sample the settings ask for, from ``load_corpus``'s rows."""
    return sample_of_file(raw, corpus) if corpus.from_file else stratified_sample(raw, corpus)


def stratified_sample(raw: pd.DataFrame, corpus: CorpusSettings) -> Sample:
    """The published demo's sample, document for document.

    The demo fetched subset "all" of its groups shuffled with ``random_state``, cleaned
    whitespace, dropped short texts, cut long ones, then drew ``per_category`` posts from
    each group (groups in sorted order) with ``DataFrame.sample(random_state=...)``.
    Here the fetch order is rebuilt from the raw table, so the sample depends on nothing else.
    """
    categories = sorted(corpus.category_names)
    pool = raw[raw["category"].isin(categories)].sort_values("corpus_position")
    # scikit-learn's shuffle in fetch_20newsgroups(random_state=...): a permutation of positions.
    order = np.arange(len(pool))
    np.random.RandomState(corpus.random_state).shuffle(order)
    pool = pool.iloc[order]

    pool = cleaned(pool, corpus)

    parts, short = [], {}
    for category in categories:
        rows = pool[pool["category"] == category]
        if corpus.per_category == "all":
            parts.append(rows)
            continue
        if len(rows) < corpus.per_category:
            short[category] = len(rows)
        parts.append(
            rows.sample(n=min(corpus.per_category, len(rows)), random_state=corpus.random_state)
        )
    return Sample(
        frame=numbered(pd.concat(parts, ignore_index=True), corpus), short_categories=short
    )


def cleaned(pool: pd.DataFrame, corpus: CorpusSettings) -> pd.DataFrame:
    """Whitespace collapsed, texts shorter than min_chars dropped, longer than max_chars cut."""
    text = pool["text"].str.replace(r"\s+", " ", regex=True).str.strip()
    pool = pool.assign(text=text)
    pool = pool[pool["text"].str.len() >= corpus.min_chars]
    return pool.assign(text=pool["text"].str[: corpus.max_chars])


def numbered(sample: pd.DataFrame, corpus: CorpusSettings) -> pd.DataFrame:
    sample = sample.reset_index(drop=True)
    sample.insert(0, "position", np.arange(len(sample), dtype=np.int32))
    sample["preview"] = preview(sample["text"], corpus.preview_chars)
    return sample[[*SAMPLE_COLUMNS, *([EXTRAS] if EXTRAS in sample else [])]]


def preview(texts: pd.Series, length: int) -> pd.Series:
    cut = texts.str[:length]
    return cut.where(texts.str.len() <= length, cut.str.rstrip() + "…")


# DuckDB's reader for each kind of corpus file.
READERS = {
    ".parquet": "read_parquet",
    ".csv": "read_csv",
    ".jsonl": "read_json",
    ".ndjson": "read_json",
}
KINDS = {"read_parquet": "Parquet", "read_csv": "CSV", "read_json": "JSON lines"}
READER_OPTIONS = {"read_csv": ", all_varchar = true", "read_json": ", format = 'newline_delimited'"}
# Where a problem row is named, at most this many are listed.
SHOWN_ROWS = 3


def corpus_files(source: str) -> list[Path]:
    """The files ``corpus.source`` names (a path or a glob), in name order."""
    names = sorted(glob.glob(os.path.expanduser(source), recursive=True))
    files = [Path(name) for name in names if Path(name).is_file()]
    if not files:
        raise CorpusError(
            f"corpus.source {source!r} matches no file: name a Parquet, CSV or JSON-lines "
            "file (or a glob of them) that exists, relative to where the build runs"
        )
    return files


def corpus_file_version(corpus: CorpusSettings) -> str:
    """A hash of the files' names and bytes: it changes exactly when what they hold does.
    Each file is read again only when its size, times or inode changed (the sensor asks
    every few seconds)."""
    digest = hashlib.sha256()
    for path in corpus_files(corpus.source):
        stat = path.stat()
        changed = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        digest.update(f"{path}\0{_file_hash(path, *changed)}".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1024)
def _file_hash(path: Path, *changed: int) -> str:
    """A hash of the file's bytes; ``changed`` (size, times, inode) keys the memo."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_corpus_file(corpus: CorpusSettings) -> RawCorpus:
    """The rows of a Parquet, CSV or JSON-lines file (or of each file a glob matches, in name
    order): the text, the label (or none), the id (or one made from the text) and the file.

    DuckDB reads them, so a file larger than memory is no obstacle to reading its columns.
    Every problem is refused before anything is stored, with the row and what is allowed."""
    import duckdb

    # Our column <- the setting that names the file's column, and that column.
    columns = {
        column: (key, name)
        for column, key, name in (
            ("text", "text_column", corpus.text_column),
            ("category", "label_column", corpus.label_column),
            ("doc_id", "id_column", corpus.id_column),
        )
        if name is not None
    }
    extras = {f"{EXTRAS}:{name}": ("extra_columns", name) for name in corpus.extra_columns}
    parts = []
    for path in corpus_files(corpus.source):
        reader = READERS[path.suffix.lower()]
        query = f"SELECT * FROM {reader}(?{READER_OPTIONS.get(reader, '')})"
        try:
            with duckdb.connect() as connection:
                relation = connection.sql(query, params=[str(path)])
                missing = [
                    f"corpus.{key} {name!r}"
                    for key, name in [*columns.values(), *extras.values()]
                    if name not in relation.columns
                ]
                if missing:
                    raise CorpusError(
                        f"{path} has no column {' or '.join(missing)}; "
                        f"its columns: {', '.join(relation.columns)}"
                    )
                chosen = ", ".join(
                    f"CAST({quoted(name)} AS VARCHAR) AS {quoted(column)}"
                    for column, (_, name) in {**columns, **extras}.items()
                )
                frame = connection.sql(f"SELECT {chosen} FROM relation").df()
        except duckdb.Error as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CorpusError(
                f"could not read {path} as {KINDS[reader]} ({first}); corpus.source takes "
                "Parquet, CSV or JSON-lines files"
            ) from None
        frame["split"] = str(path)
        frame["row"] = np.arange(1, len(frame) + 1)
        parts.append(frame)
    rows = pd.concat(parts, ignore_index=True)
    if rows.empty:
        raise CorpusError(f"corpus.source {corpus.source!r} holds no rows: nothing to embed")
    for column, (key, name) in columns.items():
        _refuse_missing(rows, column, f"corpus.{key} {name!r}")
    if "category" not in columns:
        rows["category"] = None
    repeated = 0
    if corpus.id_column:
        twice = rows[rows["doc_id"].duplicated(keep=False)]
        if len(twice):
            shown = twice[twice["doc_id"] == twice["doc_id"].iloc[0]]
            raise CorpusError(
                f"id {shown['doc_id'].iloc[0]!r} (corpus.id_column {corpus.id_column!r}) is on "
                f"{_rows(shown)}: each post needs an id of its own; nothing was stored"
            )
    else:
        rows["doc_id"] = [text_id(text) for text in rows["text"]]
        keep = ~rows["doc_id"].duplicated()
        repeated = int((~keep).sum())
        rows = rows[keep]
    rows = rows.reset_index(drop=True)
    rows["corpus_position"] = np.arange(len(rows), dtype=np.int32)
    if not extras:
        return RawCorpus(rows[RAW_COLUMNS], repeated_texts=repeated)
    rows[EXTRAS] = [
        json.dumps(dict(zip(corpus.extra_columns, values, strict=True)), ensure_ascii=False)
        for values in rows[list(extras)]
        .astype(object)
        .where(rows[list(extras)].notna(), None)
        .itertuples(index=False, name=None)
    ]
    return RawCorpus(rows[[*RAW_COLUMNS, EXTRAS]], repeated_texts=repeated)


def quoted(name: str) -> str:
    """A column name as a DuckDB identifier, whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


def text_id(text: str) -> str:
    """An id made from the text: the same text has it in any file, at any row."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _refuse_missing(rows: pd.DataFrame, column: str, named: str) -> None:
    missing = rows[column].isna() | (rows[column].str.strip() == "")
    if missing.any():
        raise CorpusError(
            f"{_rows(rows[missing])}: nothing in {named}; every row needs a text, and a label "
            "and an id where those columns are set: fill or remove the row (nothing was stored)"
        )


def _rows(rows: pd.DataFrame) -> str:
    named = [f"{file} row {row}" for file, row in zip(rows["split"], rows["row"], strict=True)]
    named = named[:SHOWN_ROWS]
    more = len(rows) - len(named)
    return ", ".join(named) + (f" and {more} more" if more else "")


def sample_of_file(raw: pd.DataFrame, corpus: CorpusSettings) -> Sample:
    """A file's sample: ``per_category`` posts per label, ``sample_size`` posts, or all.

    A post is drawn by the rank of a hash of its id and ``random_state``, not by a shuffle of
    the rows: the same seed gives the same sample, and rows appended to the file change it
    only where a new post outranks a drawn one (a shuffle would redraw it all)."""
    pool = raw.sort_values("corpus_position")
    if corpus.labelled and corpus.categories != "all":
        held = set(pool["category"])
        unknown = [name for name in corpus.categories if name not in held]
        if unknown:
            shown = sorted(held)[:10]
            raise CorpusError(
                f"corpus.categories names {', '.join(map(repr, unknown))}, which the column "
                f"{corpus.label_column!r} does not hold; it holds {', '.join(map(repr, shown))}"
                f'{" …" if len(held) > len(shown) else ""} (or set categories = "all")'
            )
        pool = pool[pool["category"].isin(corpus.categories)]
    pool = cleaned(pool, corpus)
    pool = pool.assign(rank=[draw_rank(doc_id, corpus.random_state) for doc_id in pool["doc_id"]])
    short: dict[str, int] = {}
    if corpus.sample_size is not None:
        pool = pool.nsmallest(corpus.sample_size, "rank")
        if len(pool) < corpus.sample_size:
            short["(all posts)"] = len(pool)
    elif corpus.labelled and corpus.per_category != "all":
        parts = []
        for label, rows in pool.groupby("category", sort=True):
            if len(rows) < corpus.per_category:
                short[str(label)] = len(rows)
            parts.append(rows.nsmallest(corpus.per_category, "rank"))
        pool = pd.concat(parts) if parts else pool.iloc[:0]
    order = ["category", "corpus_position"] if corpus.labelled else ["corpus_position"]
    return Sample(frame=numbered(pool.sort_values(order), corpus), short_categories=short)


def draw_rank(doc_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest())
