"""The corpus stage: load 20 Newsgroups and draw the published demo's stratified sample.

Both are plain functions of their inputs so they can be tested without Dagster.
"""

from __future__ import annotations

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
