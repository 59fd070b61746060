"""Labelled clusters of a 2-D map: what makes a map readable at a glance, and what shows which
posts an instruction regrouped.

Clusters are dense regions of the map (scikit-learn's HDBSCAN over the 2-D coordinates, so a
label names what the eye sees as a group; "leaf" selection, which keeps the finest dense
groups rather than merging them into a few large ones). Each is labelled by its most distinctive words:
class-based TF-IDF (c-TF-IDF, as BERTopic defines it), where every cluster's texts form one
class, built on scikit-learn's CountVectorizer. Plain functions over arrays: no Dagster, no
DuckDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NOISE = -1  # HDBSCAN's member number for a post in no cluster
MIN_CLUSTER_SIZE = 5
WORD_PATTERN = r"(?u)\b[^\W\d_]{3,}\b"  # words of three or more letters: no numbers, no ids
# What scikit-learn's tokens make of contractions ("don't" -> "don") and a few fillers of
# informal posts: stop words beside scikit-learn's English ones.
INFORMAL_STOP_WORDS = frozenset(
    {"don", "doesn", "didn", "isn", "wasn", "aren", "haven", "couldn", "wouldn", "shouldn"}
    | {"just", "like", "know", "think", "did", "does", "really", "going", "want", "say"}
)


@dataclass(frozen=True)
class Cluster:
    number: int
    size: int
    x: float  # where its label goes: the member nearest the members' mean
    y: float
    words: tuple[str, ...]  # most distinctive first

    @property
    def label(self) -> str:
        return " · ".join(self.words) if self.words else f"cluster {self.number}"


@dataclass(frozen=True)
class MapClusters:
    membership: np.ndarray  # (n,), a cluster number per post, NOISE for none
    clusters: list[Cluster]


# How many neighbours a point's density is read from. HDBSCAN's default is min_cluster_size,
# a share of the map: its memory grows with posts x that share, 10 GB at 100,000 posts.
DENSITY_NEIGHBOURS = 50


def min_cluster_size(documents: int, share: float) -> int:
    """The smallest group worth a label: a share of the map, never below a handful."""
    return max(MIN_CLUSTER_SIZE, round(share * documents))


def cluster_map(
    coordinates: np.ndarray, texts: Sequence[str], *, min_size: int, words: int
) -> MapClusters:
    """The dense clusters of a 2-D map (``coordinates``, one row per text), each labelled by
    its ``words`` most distinctive words. Deterministic: the same map gives the same labels."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    if len(coordinates) != len(texts):
        raise ValueError(f"{len(coordinates)} coordinates for {len(texts)} texts")
    if len(coordinates) <= min_size:
        return MapClusters(np.full(len(coordinates), NOISE, dtype=np.int64), [])
    from sklearn.cluster import HDBSCAN  # imported here: a plan, or a query, needs none of it

    membership = HDBSCAN(
        min_cluster_size=min_size,
        min_samples=min(min_size, DENSITY_NEIGHBOURS),
        cluster_selection_method="leaf",
        copy=True,
    ).fit_predict(coordinates)
    numbers = sorted(set(membership.tolist()) - {NOISE})
    vocabulary = distinctive_words(texts, membership, words)
    clusters = []
    for number in numbers:
        members = np.flatnonzero(membership == number)
        points = coordinates[members]
        anchor = members[np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))]
        clusters.append(
            Cluster(
                number=number,
                size=len(members),
                x=float(coordinates[anchor, 0]),
                y=float(coordinates[anchor, 1]),
                words=vocabulary.get(number, ()),
            )
        )
    return MapClusters(membership.astype(np.int64), clusters)


def distinctive_words(
    texts: Sequence[str], membership: np.ndarray, words: int
) -> dict[int, tuple[str, ...]]:
    """Per cluster, the ``words`` terms with the highest c-TF-IDF: a term's share of the
    cluster's words, times log(1 + A / its count over all clusters), A the mean words per
    cluster. The unclustered posts count as one more class, so a word common everywhere
    scores low everywhere."""
    by_class: dict[int, list[str]] = {}
    for text, member in zip(texts, np.asarray(membership).tolist(), strict=True):
        by_class.setdefault(member, []).append(text)
    classes = sorted(by_class)
    joined = [" ".join(by_class[number]) for number in classes]
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer
    from sklearn.preprocessing import normalize

    stop_words = sorted(ENGLISH_STOP_WORDS | INFORMAL_STOP_WORDS)
    vectorizer = CountVectorizer(stop_words=stop_words, token_pattern=WORD_PATTERN)
    try:
        counts = vectorizer.fit_transform(joined)
    except ValueError:  # no word at all: every text empty, numbers or stop words
        return {}
    totals = np.asarray(counts.sum(axis=0)).ravel()
    average = counts.sum() / len(classes)
    scores = normalize(counts, norm="l1").multiply(np.log1p(average / totals)).tocsr()
    terms = vectorizer.get_feature_names_out()
    found = {}
    for row, number in enumerate(classes):
        if number == NOISE:
            continue
        values = scores.getrow(row).toarray().ravel()
        ranked = np.lexsort((terms, -values))  # highest score first, ties alphabetically
        found[number] = tuple(str(terms[i]) for i in ranked[:words] if values[i] > 0)
    return found
