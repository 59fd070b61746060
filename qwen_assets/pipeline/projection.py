"""The projection stage: UMAP to 2-D, and alignment of each task's map onto a reference map.

UMAP's axes are arbitrary (any rotation, reflection, scale or shift of a layout is the same
layout), so two tasks' maps cannot be compared point by point as they come out. Aligning
every layout onto the reference task's layout with orthogonal Procrustes (plus scale and
translation) removes exactly that arbitrariness: what still moves is real change.

A map also stays put as its corpus grows: posts new to it are placed onto its existing
layout, and the posts it had keep their coordinates, until the new ones pass a share of it
(``umap.place_new_up_to``); then it is projected again and aligned onto its old layout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime

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
    reducer = _umap().UMAP(
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


@functools.cache
def _umap():
    """umap, with its two slowest compiles kept on disk. numba compiles UMAP's functions in
    every new process (about 10 s of the 12 s a first map costs: each Dagster run and each
    command is a new process) and keeps only what is declared ``cache=True``, which
    ``smooth_knn_dist`` and ``compute_membership_strengths`` are not. ``enable_caching`` is
    what that flag calls; numba keys the cache by the function's source and its own version,
    and keeps it beside umap's source (or under ``NUMBA_CACHE_DIR``). Where numba finds no
    writable place, or the method is gone, maps compile as before."""
    import umap
    import umap.umap_

    for function in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths):
        with contextlib.suppress(AttributeError, RuntimeError):
            function.enable_caching()
    return umap


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


def layout_name(basis: str, coordinates: np.ndarray) -> str:
    """A layout's name, ``BASIS/POINTS``: what it was projected from (UMAP settings and
    prompt) and a hash of the points it was projected to. It changes when a map is projected
    anew into other points, not when posts are placed onto it; the same projection made
    twice (a build resumed after a crash, a clean build) has the same name."""
    points = hashlib.sha256(np.ascontiguousarray(coordinates, dtype=np.float64).tobytes())
    return f"{basis}/{points.hexdigest()[:12]}"


def basis_of(layout: str) -> str:
    return layout.split("/", 1)[0]


@dataclass(frozen=True)
class StoredLayout:
    """A map's coordinates as the last build left them."""

    doc_ids: list[str]
    coordinates: np.ndarray  # (n, 2): x, y
    aligned: np.ndarray  # (n, 2): x_aligned, y_aligned
    placed_at: list[object]  # per post: when it was placed onto the layout, or None
    layout: str  # see ``layout_name``
    aligned_onto: str  # the reference map's layout that ``aligned`` is aligned onto

    def rows_of(self, doc_ids: list[str], where: np.ndarray) -> list[int]:
        """The stored rows of the posts ``where`` marks (all of them stored)."""
        index = {doc: row for row, doc in enumerate(self.doc_ids)}
        return [index[doc] for doc, chosen in zip(doc_ids, where, strict=True) if chosen]


@dataclass(frozen=True)
class GrownLayout:
    coordinates: np.ndarray  # (n, 2), in the order of the doc_ids asked for
    placed: np.ndarray  # (n,) bool: placed onto the stored layout in this build
    kept: np.ndarray  # (n,) bool: coordinates kept from the stored layout
    layout: str  # the stored layout's name when kept, else the new one's
    why: str  # one line: what was done, and why

    @property
    def projected(self) -> bool:
        """Projected (again) in this build."""
        return not self.kept.any()


def grown_layout(
    doc_ids: list[str],
    vectors: np.ndarray,
    stored: StoredLayout | None,
    basis: str,
    settings: UmapSettings,
    *,
    reproject: bool = False,
) -> GrownLayout:
    """A map's layout for ``doc_ids``: the stored one where it still holds, with new posts
    placed onto it (``place_onto``) while they are at most ``settings.place_new_up_to`` of
    the map; else a new projection, aligned onto the stored layout (on the posts both hold)
    so the map keeps its orientation. A stored layout of another basis (other UMAP settings,
    another prompt: other vectors) is never kept. ``reproject``: a person asked for a new
    projection (still aligned onto the stored layout)."""
    n = len(doc_ids)
    nothing = np.zeros(n, dtype=bool)
    had = set() if stored is None else set(stored.doc_ids)
    old = np.array([doc in had for doc in doc_ids], dtype=bool)
    usable = stored is not None and basis_of(stored.layout) == basis and old.any()
    new_share = float((~old).mean()) if n else 0.0
    if usable and not reproject and new_share <= settings.place_new_up_to:
        coordinates = np.empty((n, 2), dtype=np.float64)
        coordinates[old] = stored.coordinates[stored.rows_of(doc_ids, old)]
        if (~old).any():
            coordinates[~old] = place_onto(vectors[~old], vectors[old], coordinates[old], settings)
        placed = int((~old).sum())
        why = (
            f"placed {placed} new posts onto the layout; {int(old.sum())} kept their place"
            if placed
            else f"kept the layout of all {n} posts"
        )
        return GrownLayout(coordinates, ~old, old, stored.layout, why)
    layout = umap_layout(vectors, settings)
    if not usable:
        why = "projected (no stored layout of these settings and prompt)"
        return GrownLayout(layout, nothing, nothing, layout_name(basis, layout), why)
    onto_old = align(layout[old], stored.coordinates[stored.rows_of(doc_ids, old)])
    layout = transformed(layout, onto_old)
    why = (
        "projected again, as asked; aligned onto the old layout"
        if reproject
        else f"projected again: {new_share:.0%} of the posts are new, more than "
        f"umap.place_new_up_to ({settings.place_new_up_to:.0%}); aligned onto the old layout"
    )
    return GrownLayout(layout, nothing, nothing, layout_name(basis, layout), why)


def place_onto(
    new: np.ndarray, old: np.ndarray, old_layout: np.ndarray, settings: UmapSettings
) -> np.ndarray:
    """Where new posts go on an existing layout: each at the mean of its ``n_neighbors``
    nearest old posts' places (in the full dimension, by the map's metric), the nearer
    weighing more. This is where UMAP's ``transform`` starts a new point; its further
    epochs are left out, since they need the fitted model (its graph and search index),
    which a build does not keep."""
    from sklearn.neighbors import NearestNeighbors

    k = min(settings.n_neighbors, len(old))
    search = NearestNeighbors(n_neighbors=k, metric=settings.metric, algorithm="brute").fit(old)
    distances, indices = search.kneighbors(new)
    weights = 1.0 / (distances + 1e-6)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, old_layout[indices])


def transformed(points: np.ndarray, alignment: Alignment) -> np.ndarray:
    """``points`` moved by the rotation, scale and shift an alignment found."""
    return alignment.scale * points @ alignment.rotation + alignment.translation


def aligned_coordinates(
    doc_ids: list[str],
    layout: GrownLayout,
    stored: StoredLayout | None,
    reference: GrownLayout,
) -> tuple[np.ndarray, float]:
    """The layout aligned onto the reference map's, and the disparity. A layout that kept
    its posts, aligned onto the reference layout there is now, keeps their aligned places
    too: the new posts move by the rotation, scale and shift that carries the kept ones onto
    theirs. Once the reference map is projected anew, every map is aligned onto it again."""
    if layout.kept.any() and stored is not None and stored.aligned_onto == reference.layout:
        rows = stored.rows_of(doc_ids, layout.kept)
        onto = align(layout.coordinates[layout.kept], stored.aligned[rows])
        aligned = transformed(layout.coordinates, onto)
        aligned[layout.kept] = stored.aligned[rows]
        return aligned, onto.disparity
    alignment = align(layout.coordinates, reference.coordinates)
    return alignment.coordinates, alignment.disparity


def placement_times(
    doc_ids: list[str], layout: GrownLayout, stored: StoredLayout | None, now: datetime
) -> list[object]:
    """When each post was placed onto the layout: now for the newly placed, as before for the
    kept, None for posts laid out with the map."""
    before = {} if stored is None else dict(zip(stored.doc_ids, stored.placed_at, strict=True))
    return [
        now if placed else before.get(doc) if kept else None
        for doc, placed, kept in zip(doc_ids, layout.placed, layout.kept, strict=True)
    ]
