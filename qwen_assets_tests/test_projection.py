"""A map that grows: new posts placed onto the layout it has, or the map projected again and
aligned onto its old self, on clustered vectors (UMAP on 2 cores, a few seconds)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from qwen_assets.pipeline.projection import StoredLayout, grown_layout, place_onto
from qwen_assets.settings import UmapSettings

SETTINGS = UmapSettings(place_new_up_to=0.1)


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """300 unit vectors around six centres, as embeddings of six topics would be."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 32))
    vectors = centres[rng.integers(0, 6, size=300)] + 0.25 * rng.normal(size=(300, 32))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def first(clustered) -> StoredLayout:
    """The layout of the first 250 posts, as a build stores it."""
    ids = [f"d{number}" for number in range(250)]
    made = grown_layout(ids, clustered[:250], None, "basis-1", SETTINGS)
    assert made.projected and made.layout.startswith("basis-1/")
    return StoredLayout(
        ids, made.coordinates, made.coordinates.copy(), [None] * 250, made.layout, made.layout
    )


def ids(count: int) -> list[str]:
    return [f"d{number}" for number in range(count)]


def test_a_few_new_posts_are_placed_and_the_others_keep_their_place(clustered, first):
    grown = grown_layout(ids(270), clustered[:270], first, "basis-1", SETTINGS)
    assert not grown.projected and grown.layout == first.layout, "the same layout, grown"
    assert grown.placed.sum() == 20 and grown.kept.sum() == 250
    assert np.array_equal(grown.coordinates[:250], first.coordinates)
    # A placed post lands among the posts nearest it in the full dimension: nearer to them,
    # on the map, than the typical pair of posts is.
    old = first.coordinates
    for row in range(250, 270):
        nearest = np.argsort(np.linalg.norm(clustered[:250] - clustered[row], axis=1))[:5]
        to_them = np.linalg.norm(old[nearest] - grown.coordinates[row], axis=1).mean()
        typical = np.linalg.norm(old - old.mean(axis=0), axis=1).mean()
        assert to_them < typical


def test_a_post_placed_where_an_old_one_is_in_the_full_dimension_lands_on_it(clustered, first):
    twin = clustered[[17]] + 1e-9
    placed = place_onto(twin, clustered[:250], first.coordinates, SETTINGS)
    assert np.allclose(placed[0], first.coordinates[17], atol=1e-3)


def test_removing_posts_moves_no_other(clustered, first):
    kept = list(range(0, 250, 2))
    grown = grown_layout([f"d{n}" for n in kept], clustered[kept], first, "basis-1", SETTINGS)
    assert not grown.projected and not grown.placed.any()
    assert np.array_equal(grown.coordinates, first.coordinates[kept])


def test_past_the_share_the_map_is_projected_again_and_keeps_its_orientation(clustered, first):
    """50 new posts of 300 (17 %) > 10 %: projected anew, then rotated onto the old layout,
    so the old posts land near where they were rather than anywhere."""
    grown = grown_layout(ids(300), clustered, first, "basis-1", SETTINGS)
    assert grown.projected and not grown.placed.any()
    assert grown.layout.startswith("basis-1/") and grown.layout != first.layout
    moved = np.linalg.norm(grown.coordinates[:250] - first.coordinates, axis=1).mean()
    spread = np.linalg.norm(first.coordinates - first.coordinates.mean(axis=0), axis=1).mean()
    assert moved < spread
    assert "more than umap.place_new_up_to (10%)" in grown.why


def test_a_layout_of_another_basis_is_never_kept(clustered, first):
    """Another prompt or other UMAP settings: other vectors or another projection, so the
    stored places mean nothing for them."""
    grown = grown_layout(ids(250), clustered[:250], first, "basis-2", SETTINGS)
    assert grown.projected and not grown.kept.any()


MAP_IN_A_NEW_PROCESS = """
import numpy as np, umap.umap_
from qwen_assets.pipeline.projection import umap_layout
from qwen_assets.settings import UmapSettings
umap_layout(np.random.default_rng(0).normal(size=(60, 8)), UmapSettings(n_neighbors=5))
for function in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths):
    print(function.__name__, len(function.stats.cache_hits), len(function.stats.cache_misses))
"""


def test_a_new_process_draws_its_first_map_from_compiled_code_kept_on_disk():
    """Each build is a new process: after one has drawn a map, the next compiles nothing of
    what it keeps (the suite keeps numba's cache under pytest's, ``conftest.pytest_configure``;
    a fresh one would first compile all of pynndescent, a minute here)."""

    def compiles() -> dict[str, tuple[int, int]]:
        ran = subprocess.run(
            [sys.executable, "-c", MAP_IN_A_NEW_PROCESS], capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        rows = [line.split() for line in ran.stdout.splitlines()]
        return {name: (int(hits), int(misses)) for name, hits, misses in rows}

    first, second = compiles(), compiles()
    assert set(first) == {"smooth_knn_dist", "compute_membership_strengths"}
    assert all(hits + misses == 1 for hits, misses in first.values()), first
    assert all((hits, misses) == (1, 0) for hits, misses in second.values()), second
