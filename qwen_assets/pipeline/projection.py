"""The projection stage: UMAP to 2-D, and alignment of each task's map onto a reference map.

UMAP's axes are arbitrary (any rotation, reflection, scale or shift of a layout is the same
layout), so two tasks' maps cannot be compared point by point as they come out. Aligning
every layout onto the reference task's layout with orthogonal Procrustes (plus scale and
translation) removes exactly that arbitrariness: what still moves is real change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes

from qwen_assets.errors import ProjectionError
from qwen_assets.settings import UmapSettings


def umap_layout(embeddings: np.ndarray, settings: UmapSettings) -> np.ndarray:
    """2-D UMAP coordinates, reproducible for a fixed ``random_state``."""
    rows = embeddings.shape[0]
    if rows <= settings.n_neighbors:
        raise ProjectionError(
            f"umap.n_neighbors is {settings.n_neighbors} but there are only {rows} documents; "
            f"allowed: 2 to {rows - 1}"
        )
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=settings.n_neighbors,
        min_dist=settings.min_dist,
        metric=settings.metric,
        random_state=settings.random_state,
        precomputed_knn=exact_neighbours(embeddings, settings),
    )
    with warnings.catch_warnings():
        # A fixed random_state turns off parallelism; UMAP says so every time.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        # Neighbours given without a search index: only ``transform`` needs one, never used.
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\].*not an NNDescent")
        return np.asarray(reducer.fit_transform(embeddings), dtype=np.float64)


# Below this many rows UMAP finds exact nearest neighbours itself (above, approximate ones).
EXACT_NEIGHBOURS_BELOW = 4096


def exact_neighbours(
    embeddings: np.ndarray, settings: UmapSettings
) -> tuple[np.ndarray, np.ndarray, None] | tuple[None, None, None]:
    """The exact neighbours UMAP would compute for a small map, found by scikit-learn: UMAP's
    own brute-force search is compiled by numba in every new process (about 5 s per build,
    more than the search itself at the sample's size). Larger maps keep UMAP's approximate
    search."""
    if embeddings.shape[0] >= EXACT_NEIGHBOURS_BELOW:
        return (None, None, None)
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(
        n_neighbors=settings.n_neighbors, metric=settings.metric, algorithm="brute"
    ).fit(embeddings)
    distances, indices = search.kneighbors(embeddings)
    return (indices, distances.astype(np.float32), None)


@dataclass(frozen=True)
class Alignment:
    coordinates: np.ndarray
    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    # Residual after alignment as a share of the reference's spread: 0 is identical, 1 no fit.
    disparity: float


def align(layout: np.ndarray, reference: np.ndarray) -> Alignment:
    """Rotate (or reflect), scale and shift ``layout`` to best match ``reference``."""
    if layout.shape != reference.shape:
        raise ProjectionError(
            f"cannot align a layout of shape {layout.shape} onto one of shape {reference.shape}"
        )
    layout_mean, reference_mean = layout.mean(axis=0), reference.mean(axis=0)
    centred, target = layout - layout_mean, reference - reference_mean
    rotation, singular_sum = orthogonal_procrustes(centred, target)
    spread = float((centred**2).sum())
    scale = singular_sum / spread if spread > 0 else 1.0
    coordinates = scale * centred @ rotation + reference_mean
    target_spread = float((target**2).sum())
    residual = float(((coordinates - reference) ** 2).sum())
    disparity = residual / target_spread if target_spread > 0 else 0.0
    return Alignment(
        coordinates=coordinates,
        rotation=rotation,
        scale=float(scale),
        translation=reference_mean - scale * layout_mean @ rotation,
        disparity=disparity,
    )
