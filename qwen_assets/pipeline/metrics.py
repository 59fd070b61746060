"""How well each task's space separates the newsgroups, as numbers rather than claims.

Plain functions over arrays (no Dagster, no DuckDB), built on scikit-learn where it has the
piece. Neighbours are by cosine similarity of unit vectors, computed in blocks so the full
corpus never needs an n x n matrix in memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qwen_assets.pipeline.embedding.core import normalise

NEIGHBOUR_BLOCK = 2048  # rows of the similarity matrix held at once


# Above this many rows, neighbours are approximate (NNDescent, as UMAP finds its own): exact
# ones cost n^2 (32 s a map at 30,000 posts on 2 cores, against 7 s).
EXACT_NEIGHBOURS_UP_TO = 20_000


def nearest_neighbours(
    vectors: np.ndarray, k: int, exact_up_to: int = EXACT_NEIGHBOURS_UP_TO
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most cosine-similar other rows, most similar first: exact up to
    ``exact_up_to`` rows, approximate above.

    Returns (indices, similarities), both of shape (n, k). A document is never its own
    neighbour, even when another document has the very same text.
    """
    unit = normalise(np.asarray(vectors, dtype=np.float32), None)
    n = len(unit)
    k = min(k, n - 1)
    if n > exact_up_to:
        return _approximate_neighbours(unit, k)
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


# NNDescent's graph is searched this wide and cut to k: 99.9 % of the exact neighbours of
# 30,000 synthetic 384-dimension vectors (10 neighbours; 65 % searched only 11 wide).
APPROXIMATE_CANDIDATES = 60


def _approximate_neighbours(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """pynndescent's neighbour graph (UMAP's own dependency), cut to each row's ``k`` nearest
    others (where a twin text took a row's own place, its furthest is dropped instead)."""
    from pynndescent import NNDescent

    graph, distances = NNDescent(
        unit, metric="cosine", n_neighbors=max(APPROXIMATE_CANDIDATES, k + 1), random_state=0
    ).neighbor_graph
    graph, distances = graph[:, : k + 1], distances[:, : k + 1]
    keep = graph != np.arange(len(unit))[:, None]
    keep[keep.sum(axis=1) > k, k] = False
    indices = graph[keep].reshape(len(unit), k)
    similarities = (1 - distances[keep]).reshape(len(unit), k).astype(np.float32)
    return indices.astype(np.int64), similarities


def neighbourhood_overlap(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-document Jaccard index of two neighbour-index arrays of shape (n, k)."""
    overlap = np.empty(len(first), dtype=np.float64)
    for row, (a, b) in enumerate(zip(first, second, strict=True)):
        shared = len(np.intersect1d(a, b, assume_unique=True))
        overlap[row] = shared / (len(a) + len(b) - shared)
    return overlap


@dataclass(frozen=True)
class Agreement:
    """How closely two sets of vectors for the same texts agree (a faster runtime's against
    the model's own): per-text cosine, and how many of each text's neighbours they share."""

    min_cosine: float
    mean_cosine: float
    neighbour_jaccard: float  # mean over texts, top-k neighbours


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> Agreement:
    cosines = (normalise(reference, None) * normalise(other, None)).sum(axis=1)
    overlap = neighbourhood_overlap(
        nearest_neighbours(reference, k)[0], nearest_neighbours(other, k)[0]
    )
    return Agreement(float(cosines.min()), float(cosines.mean()), float(overlap.mean()))


def knn_accuracy(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out k-NN: how often the majority category of a document's neighbours is its
    own (ties go to the category listed first)."""
    labels = np.asarray(labels)
    votes = labels[neighbours]
    counts = np.zeros((len(labels), labels.max() + 1), dtype=np.int32)
    np.add.at(counts, (np.arange(len(labels))[:, None], votes), 1)
    return float((counts.argmax(axis=1) == labels).mean())


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


@dataclass(frozen=True)
class TaskQuality:
    """None: a corpus without labels (and the probe: too few posts in some category)."""

    knn_accuracy: float | None
    silhouette: float | None
    trustworthiness: float
    overlap_with_reference: float
    documents_scored: int
    probe_accuracy: float | None
    v_measure: float | None
    cka_with_reference: float

    def rounded(self, digits: int = 4) -> dict[str, float | int]:
        return {
            name: round(value, digits) if isinstance(value, float) else value
            for name, value in asdict(self).items()
        }


PROBE_FOLDS = 5


def probe_accuracy(vectors: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:
    """What a classifier gets from the space: a linear probe's (logistic regression)
    accuracy on the categories, stratified 5-fold cross-validated, full dimension. None
    when a category has fewer posts than folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if np.bincount(labels).min() < PROBE_FOLDS:
        return None
    folds = StratifiedKFold(PROBE_FOLDS, shuffle=True, random_state=seed)
    probe = LogisticRegression(max_iter=2000)
    return float(cross_val_score(probe, vectors, labels, cv=folds).mean())


def probe_rank_correlation(vectors: np.ndarray, scores: np.ndarray, seed: int = 0) -> float:
    """What a regressor gets from the space on a score (sentiment, hostility, length): the
    Spearman rank correlation between the scores and a linear probe's (ridge regression)
    5-fold cross-validated predictions of them, full dimension. About 0 when the space holds
    nothing of the score."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    scores = np.asarray(scores, dtype=float)
    if np.ptp(scores) == 0 or len(scores) < 2 * PROBE_FOLDS:
        return 0.0
    folds = KFold(PROBE_FOLDS, shuffle=True, random_state=seed)
    predicted = cross_val_predict(RidgeCV(alphas=(0.1, 1.0, 10.0)), vectors, scores, cv=folds)
    if np.ptp(predicted) == 0:
        return 0.0
    return float(spearmanr(scores, predicted).statistic)


def v_measure(vectors: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """How k-means clusters of the unit vectors (one per category) match the categories,
    as MTEB scores its 20 Newsgroups clustering task (0..1)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    clusters = KMeans(len(np.unique(labels)), n_init=10, random_state=seed).fit_predict(unit)
    return float(v_measure_score(labels, clusters))


def linear_cka(first: np.ndarray, second: np.ndarray) -> float:
    """Linear centred kernel alignment of two embeddings of the same posts (Kornblith et
    al., 2019): 1 for spaces equal up to rotation and scale, near 0 for unrelated ones;
    their widths may differ."""
    x = np.asarray(first, dtype=np.float64) - np.mean(first, axis=0)
    y = np.asarray(second, dtype=np.float64) - np.mean(second, axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def task_quality(
    vectors: np.ndarray,
    layout: np.ndarray,
    labels: np.ndarray | None,
    neighbours: np.ndarray,
    reference_neighbours: np.ndarray,
    reference_vectors: np.ndarray,
    *,
    sample_size: int,
    seed: int = 0,
) -> TaskQuality:
    """The figures of the quality panel, and what a classifier and a clustering get.

    - k-NN accuracy: category from the full-dimension neighbours.
    - silhouette: of the categories, cosine, full dimension (-1..1, higher separates more).
    - trustworthiness: how far the 2-D layout keeps the full-dimension neighbours (0..1).
    - overlap with the reference task: mean Jaccard of the neighbour sets (1 for itself).
    - probe accuracy, V-measure: see ``probe_accuracy`` and ``v_measure``.
    - CKA with the reference task: ``linear_cka`` of the two spaces (1 for itself).

    The silhouette, trustworthiness, the probe and V-measure are computed on a sample of
    ``sample_size`` posts (all of them up to that many): their cost grows faster than the
    corpus.

    ``labels`` None (a corpus without them): the figures about categories are None.
    """
    from sklearn.manifold import trustworthiness  # here: a plan, or a query, needs none of it
    from sklearn.metrics import silhouette_score

    rows = sample_rows(len(vectors), sample_size, seed)
    k = neighbours.shape[1]
    labelled = labels is not None
    labels = np.asarray(labels) if labelled else np.zeros(len(vectors), dtype=int)
    return TaskQuality(
        knn_accuracy=knn_accuracy(neighbours, labels) if labelled else None,
        silhouette=float(silhouette_score(vectors[rows], labels[rows], metric="cosine"))
        if labelled
        else None,
        trustworthiness=float(
            trustworthiness(vectors[rows], layout[rows], n_neighbors=k, metric="cosine")
        ),
        overlap_with_reference=float(
            neighbourhood_overlap(neighbours, reference_neighbours).mean()
        ),
        documents_scored=len(rows),
        probe_accuracy=probe_accuracy(vectors[rows], labels[rows], seed) if labelled else None,
        v_measure=v_measure(vectors[rows], labels[rows], seed) if labelled else None,
        cka_with_reference=linear_cka(vectors, reference_vectors),
    )


def map_neighbours(layout: np.ndarray, k: int) -> np.ndarray:
    """Each point's ``k`` nearest other points on a 2-D map (Euclidean), nearest first."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(layout) - 1)
    found = NearestNeighbors(n_neighbors=k + 1).fit(layout).kneighbors(return_distance=False)
    return found[:, :k] if found.shape[1] > k else found


def score_agreement(neighbours: np.ndarray, scores: np.ndarray) -> float:
    """How far neighbourhoods agree on a score: leave-one-out k-NN regression, as the Spearman
    rank correlation between each post's score and the mean score of its neighbours. About
    0 when neighbourhoods ignore the score, 1 when they are sorted by it."""
    from scipy.stats import spearmanr

    scores = np.asarray(scores, dtype=float)
    predicted = scores[neighbours].mean(axis=1)
    if np.ptp(scores) == 0 or np.ptp(predicted) == 0:
        return 0.0
    return float(spearmanr(scores, predicted).statistic)


def property_agreement(
    neighbours: np.ndarray, labels: np.ndarray | None, scores: dict[str, np.ndarray]
) -> dict[str, float]:
    """For one set of neighbourhoods: k-NN accuracy on the category (not without labels),
    and the agreement on each score property."""
    figures = {} if labels is None else {"category": knn_accuracy(neighbours, labels)}
    figures.update({name: score_agreement(neighbours, values) for name, values in scores.items()})
    return figures


CHANCE_ROUNDS = 200  # shuffles behind a headline's chance band
CHANCE_QUANTILE = 0.95


def chance_difference(
    neighbours: np.ndarray,
    reference_neighbours: np.ndarray,
    values: np.ndarray,
    *,
    category: bool,
    rounds: int = CHANCE_ROUNDS,
    seed: int = 0,
) -> float:
    """How far two sets of neighbourhoods' figures on a property differ by chance: the 95th
    percentile of the absolute difference between them when the property's values are
    shuffled across posts (the neighbourhoods kept). A real difference lies beyond it."""
    figure = knn_accuracy if category else score_agreement
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(rounds):
        shuffled = rng.permutation(values)
        differences.append(
            abs(figure(neighbours, shuffled) - figure(reference_neighbours, shuffled))
        )
    return float(np.quantile(differences, CHANCE_QUANTILE))


@dataclass(frozen=True)
class Headline:
    """A task's figure on the property it aims at, against the reference (no instruction),
    in the figure's own units, with how far chance alone moves it (``chance_difference``)."""

    task: str
    target: str
    figure: float
    reference_task: str
    reference_figure: float
    chance: float | None = None

    @property
    def difference(self) -> float:
        return self.figure - self.reference_figure

    def sentence(self) -> str:
        measure = "k-NN accuracy" if self.target == "category" else "rank agreement"
        said = (
            f"The {self.task} instruction changes how far neighbourhoods agree on {self.target} "
            f"by {self.difference:+.3f} ({measure} {self.figure:.3f} against "
            f"{self.reference_figure:.3f} for {self.reference_task})"
        )
        if self.chance is None:
            return said + "."
        shuffled = "labels" if self.target == "category" else f"{self.target} scores"
        verdict = "beyond" if abs(self.difference) > self.chance else "within"
        return (
            f"{said}; shuffled {shuffled} change it by up to {self.chance:.3f}, so this is "
            f"{verdict} chance."
        )
