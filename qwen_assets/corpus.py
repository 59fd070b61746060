"""The corpus stage: load 20 Newsgroups and draw the published demo's stratified sample.

Both are plain functions of their inputs so they can be tested without Dagster.
"""

from __future__ import annotations

import codecs
import os
import pickle
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qwen_assets.settings import CorpusSettings

REMOVE = ("headers", "footers", "quotes")
ARCHIVE_FOLDERS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}
RAW_COLUMNS = ["doc_id", "corpus_position", "split", "category", "text"]
SAMPLE_COLUMNS = ["position", "doc_id", "category", "text", "preview"]


class CorpusError(RuntimeError):
    """The corpus cannot be loaded; the message says what to fix."""


def load_raw_newsgroups(archive: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """All 18,846 posts (train then test, in scikit-learn's order), with headers,
    footers and quotes removed.

    With ``archive`` (a local ``20news-bydate.tar.gz``) scikit-learn's cache is filled
    from it and nothing is downloaded.
    """
    from sklearn.datasets import fetch_20newsgroups

    if archive is not None:
        fill_sklearn_cache(Path(archive))
    try:
        bunch = fetch_20newsgroups(
            subset="all", remove=REMOVE, shuffle=False, download_if_missing=archive is None
        )
    except Exception as error:  # the download fails in many ways; all mean the same to a user
        raise CorpusError(
            f"could not download 20 Newsgroups ({type(error).__name__}: {error}); on a machine "
            "without internet set QWEN_ASSETS_NEWSGROUPS_ARCHIVE to a local 20news-bydate.tar.gz"
        ) from error
    doc_ids = [_doc_id(Path(name)) for name in bunch.filenames]
    frame = pd.DataFrame(
        {
            "doc_id": doc_ids,
            "corpus_position": np.arange(len(doc_ids), dtype=np.int32),
            "split": [doc_id.split("/", 1)[0] for doc_id in doc_ids],
            "category": [bunch.target_names[target] for target in bunch.target],
            "text": bunch.data,
        }
    )
    return frame[RAW_COLUMNS]


def _doc_id(path: Path) -> str:
    """``train/sci.med/59207``: the post's place in the archive, the same on every machine."""
    split = path.parent.parent.name.rsplit("-", 1)[-1]
    return f"{split}/{path.parent.name}/{path.name}"


def _extract_safely(tar: tarfile.TarFile, workdir: Path, archive: Path) -> None:
    """Extract plain files and folders only, never outside ``workdir``. Python 3.11.4+ has
    this as the "data" filter; Debian 12's Python 3.11.2 does not, so check by hand there."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(workdir, filter="data")
        return
    root = workdir.resolve()
    for member in tar.getmembers():
        inside = (root / member.name).resolve().is_relative_to(root)
        if not inside or not (member.isfile() or member.isdir()):
            raise CorpusError(
                f"the archive {archive} holds {member.name!r}, a link or a path outside the "
                "archive: not extracted"
            )
    tar.extractall(workdir)  # every member checked above


def fill_sklearn_cache(archive: Path) -> Path:
    """Build scikit-learn's 20 Newsgroups cache from a local archive, as its downloader would."""
    from sklearn.datasets import get_data_home, load_files
    from sklearn.datasets._twenty_newsgroups import CACHE_NAME, _pkl_filepath

    cache_path = Path(_pkl_filepath(get_data_home(), CACHE_NAME))
    if cache_path.exists():
        return cache_path
    if not archive.is_file():
        raise CorpusError(
            f"the 20 Newsgroups archive {archive} does not exist "
            "(QWEN_ASSETS_NEWSGROUPS_ARCHIVE or corpus.archive must name 20news-bydate.tar.gz)"
        )
    with tempfile.TemporaryDirectory(prefix="20news-") as workdir:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                _extract_safely(tar, Path(workdir), archive)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise CorpusError(
                f"the 20 Newsgroups archive {archive} is not a readable .tar.gz ({error})"
            ) from None
        folders = {split: Path(workdir, name) for split, name in ARCHIVE_FOLDERS.items()}
        if not all(folder.is_dir() for folder in folders.values()):
            raise CorpusError(
                f"the archive {archive} does not hold the folders "
                f"{' and '.join(ARCHIVE_FOLDERS.values())}: is it 20news-bydate.tar.gz?"
            )
        cache = {split: load_files(folder, encoding="latin1") for split, folder in folders.items()}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves a half-written cache behind.
    partial = cache_path.with_suffix(".partial")
    partial.write_bytes(codecs.encode(pickle.dumps(cache), "zlib_codec"))
    partial.replace(cache_path)
    return cache_path


@dataclass(frozen=True)
class Sample:
    frame: pd.DataFrame
    # Groups that had fewer documents than asked for, with how many they had.
    short_categories: dict[str, int] = field(default_factory=dict)


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

    text = pool["text"].str.replace(r"\s+", " ", regex=True).str.strip()
    pool = pool.assign(text=text)
    pool = pool[pool["text"].str.len() >= corpus.min_chars]
    pool = pool.assign(text=pool["text"].str[: corpus.max_chars])

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
    sample = pd.concat(parts, ignore_index=True)
    sample.insert(0, "position", np.arange(len(sample), dtype=np.int32))
    sample["preview"] = preview(sample["text"], corpus.preview_chars)
    return Sample(frame=sample[SAMPLE_COLUMNS], short_categories=short)


def preview(texts: pd.Series, length: int) -> pd.Series:
    cut = texts.str[:length]
    return cut.where(texts.str.len() <= length, cut.str.rstrip() + "…")
