"""How well each task's space separates the newsgroups, as numbers rather than claims.

Plain functions over arrays (no Dagster, no DuckDB), built on scikit-learn where it has the
piece. Neighbours are by cosine similarity of unit vectors, computed in blocks so the full
corpus never needs an n x n matrix in memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.manifold import trustworthiness
from sklearn.metrics import silhouette_score

from qwen_assets.embedding.core import normalise

NEIGHBOUR_BLOCK = 2048  # rows of the similarity matrix held at once


def nearest_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most cosine-similar other rows, most similar first.

    Returns (indices, similarities), both of shape (n, k). A document is never its own
    neighbour, even when another document has the very same text.
    """
    unit = normalise(np.asarray(vectors, dtype=np.float32), None)
    n = len(unit)
    k = min(k, n - 1)
    indices = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, NEIGHBOUR_BLOCK):
        block = unit[start : start + NEIGHBOUR_BLOCK] @ unit.T
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
        similarities[start : start + len(block)] = np.take_along_axis(top_scores, order, axis=1)
    return indices, similarities


def neighbourhood_overlap(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-document Jaccard index of two neighbour-index arrays of shape (n, k)."""
    overlap = np.empty(len(first), dtype=np.float64)
    for row, (a, b) in enumerate(zip(first, second, strict=True)):
        shared = len(np.intersect1d(a, b, assume_unique=True))
        overlap[row] = shared / (len(a) + len(b) - shared)
    return overlap


def knn_accuracy(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out k-NN: how often the majority category of a document's neighbours is its
    own (ties go to the category listed first)."""
    labels = np.asarray(labels)
    votes = labels[neighbours]
    predicted = np.array([np.bincount(row, minlength=labels.max() + 1).argmax() for row in votes])
    return float((predicted == labels).mean())


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


@dataclass(frozen=True)
class TaskQuality:
    knn_accuracy: float
    silhouette: float
    trustworthiness: float
    overlap_with_reference: float
    documents_scored: int

    def rounded(self, digits: int = 4) -> dict[str, float | int]:
        return {
            name: round(value, digits) if isinstance(value, float) else value
            for name, value in asdict(self).items()
        }


def task_quality(
    vectors: np.ndarray,
    layout: np.ndarray,
    labels: np.ndarray,
    neighbours: np.ndarray,
    reference_neighbours: np.ndarray,
    *,
    sample_size: int,
    seed: int = 0,
) -> TaskQuality:
    """The four figures of the quality panel.

    - k-NN accuracy: category from the full-dimension neighbours.
    - silhouette: of the categories, cosine, full dimension (-1..1, higher separates more).
    - trustworthiness: how far the 2-D layout keeps the full-dimension neighbours (0..1).
    - overlap with the reference task: mean Jaccard of the neighbour sets (1 for itself).
    """
    labels = np.asarray(labels)
    rows = _sample(len(vectors), sample_size, seed)
    k = neighbours.shape[1]
    return TaskQuality(
        knn_accuracy=knn_accuracy(neighbours, labels),
        silhouette=float(silhouette_score(vectors[rows], labels[rows], metric="cosine")),
        trustworthiness=float(
            trustworthiness(vectors[rows], layout[rows], n_neighbors=k, metric="cosine")
        ),
        overlap_with_reference=float(
            neighbourhood_overlap(neighbours, reference_neighbours).mean()
        ),
        documents_scored=len(rows),
    )
