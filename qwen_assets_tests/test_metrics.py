"""The quality figures, as properties that hold whatever the data."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from qwen_assets.pipeline import metrics
from qwen_assets.pipeline.metrics import (
    knn_accuracy,
    nearest_neighbours,
    neighbourhood_overlap,
    task_quality,
)


def clusters(per_cluster: int = 40, count: int = 4, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, 16))
    vectors = np.concatenate(
        [centre + spread * rng.normal(size=(per_cluster, 16)) for centre in centres]
    )
    return vectors, np.repeat(np.arange(count), per_cluster)


@pytest.mark.parametrize("block", [7, 2048])
def test_neighbours_match_a_brute_force_search_across_blocks(monkeypatch, block):
    monkeypatch.setattr(metrics, "NEIGHBOUR_BLOCK", block)
    vectors = np.random.default_rng(1).normal(size=(50, 8))
    indices, similarities = nearest_neighbours(vectors, 5)
    expected = (
        NearestNeighbors(n_neighbors=6, metric="cosine")
        .fit(vectors)
        .kneighbors(vectors, return_distance=False)[:, 1:]
    )
    assert np.array_equal(indices, expected)
    assert (np.diff(similarities, axis=1) <= 1e-6).all(), "most similar first"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(similarities[:, 0], (unit * unit[indices[:, 0]]).sum(axis=1), atol=1e-5)


def test_a_document_is_never_its_own_neighbour_even_with_a_twin():
    vectors = np.random.default_rng(2).normal(size=(20, 4))
    vectors[3] = vectors[7]
    indices, similarities = nearest_neighbours(vectors, 3)
    assert all(row not in indices[row] for row in range(20))
    assert indices[3, 0] == 7 and indices[7, 0] == 3
    assert similarities[3, 0] == pytest.approx(1.0, abs=1e-5)


def test_above_the_exact_limit_neighbours_are_approximate_and_nearly_all_found():
    """A large corpus's neighbours come from NNDescent: almost every exact neighbour, most
    similar first, never the post itself, twins found as each other's nearest."""
    vectors, _ = clusters(count=8, per_cluster=250)
    vectors[3] = vectors[7]
    exact = nearest_neighbours(vectors, 10)
    approximate = nearest_neighbours(vectors, 10, exact_up_to=len(vectors) - 1)
    pairs = zip(exact[0], approximate[0], strict=True)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
    assert found > 0.95
    indices, similarities = approximate
    assert indices.shape == similarities.shape == (len(vectors), 10)
    assert not (indices == np.arange(len(vectors))[:, None]).any()
    assert (np.diff(similarities, axis=1) <= 1e-6).all()
    assert indices[3, 0] == 7 and indices[7, 0] == 3
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(similarities, (unit[:, None] * unit[indices]).sum(axis=2), atol=1e-5)


def test_overlap_is_one_with_itself_and_zero_when_disjoint():
    first = np.array([[1, 2, 3], [4, 5, 6]])
    assert neighbourhood_overlap(first, first).tolist() == [1.0, 1.0]
    assert neighbourhood_overlap(first, first + 10).tolist() == [0.0, 0.0]
    assert neighbourhood_overlap(np.array([[1, 2]]), np.array([[2, 3]])).tolist() == [1 / 3]


def test_knn_accuracy_is_perfect_on_separated_clusters_and_near_chance_on_shuffled_labels():
    vectors, labels = clusters()
    neighbours, _ = nearest_neighbours(vectors, 10)
    assert knn_accuracy(neighbours, labels) == 1.0
    shuffled = np.random.default_rng(3).permutation(labels)
    assert knn_accuracy(neighbours, shuffled) < 0.5


def test_task_quality_ranks_a_separating_space_above_a_mixed_one():
    vectors, labels = clusters()
    noise = np.random.default_rng(4).normal(size=vectors.shape)
    layout = vectors[:, :2]
    separated_neighbours, _ = nearest_neighbours(vectors, 10)
    noise_neighbours, _ = nearest_neighbours(noise, 10)
    separated = task_quality(
        vectors,
        layout,
        labels,
        separated_neighbours,
        separated_neighbours,
        vectors,
        sample_size=1000,
    )
    mixed = task_quality(
        noise,
        noise[:, :2],
        labels,
        noise_neighbours,
        separated_neighbours,
        vectors,
        sample_size=1000,
    )
    assert separated.overlap_with_reference == 1.0
    assert mixed.overlap_with_reference < 0.2
    assert separated.knn_accuracy > mixed.knn_accuracy
    assert separated.silhouette > 0.5 > mixed.silhouette
    assert separated.trustworthiness > mixed.trustworthiness
    assert separated.documents_scored == len(vectors)
    assert separated.probe_accuracy > 0.95 and mixed.probe_accuracy < 0.6
    assert separated.v_measure > 0.9 and mixed.v_measure < 0.2
    assert separated.cka_with_reference == pytest.approx(1.0)
    assert mixed.cka_with_reference < 0.3


def test_cka_ignores_rotation_and_scale_and_a_probe_needs_five_posts_a_group():
    from qwen_assets.pipeline.metrics import linear_cka, probe_accuracy

    vectors, labels = clusters()
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(vectors.shape[1],) * 2))
    assert linear_cka(vectors, 3.0 * vectors @ rotation) == pytest.approx(1.0)
    assert linear_cka(vectors, vectors[:, :2]) < 1.0, "a projection loses what CKA sees"
    few = np.r_[labels[labels != 0], [0] * 4]  # one group of four posts
    assert probe_accuracy(vectors[: len(few)], few) is None


def test_task_quality_samples_the_quadratic_figures_above_the_sample_size():
    vectors, labels = clusters(per_cluster=100)
    neighbours, _ = nearest_neighbours(vectors, 10)
    quality = task_quality(
        vectors, vectors[:, :2], labels, neighbours, neighbours, vectors, sample_size=150
    )
    assert quality.documents_scored == 150
    assert quality.knn_accuracy == 1.0, "k-NN accuracy always uses every document"


def test_trustworthiness_is_perfect_for_a_faithful_map_and_low_for_a_shuffled_one():
    rng = np.random.default_rng(5)
    flat = rng.normal(size=(300, 2))
    vectors = np.c_[flat, np.zeros((300, 14))] + 3.0  # 2-D data in 16 dimensions, off the origin
    labels = (flat[:, 0] > 0).astype(int)  # two groups, for the silhouette
    neighbours, _ = nearest_neighbours(vectors, 10)
    faithful = task_quality(
        vectors, flat + 3.0, labels, neighbours, neighbours, vectors, sample_size=1000
    )
    shuffled = task_quality(
        vectors,
        rng.permutation(flat) + 3.0,
        labels,
        neighbours,
        neighbours,
        vectors,
        sample_size=1000,
    )
    assert faithful.trustworthiness > 0.99
    assert shuffled.trustworthiness < 0.7


def test_a_score_predicts_itself_through_a_map_built_from_it_and_shuffled_is_chance():
    from qwen_assets.pipeline.metrics import map_neighbours, score_agreement

    rng = np.random.default_rng(6)
    scores = rng.normal(size=500)
    layout = np.c_[scores, rng.normal(scale=1e-3, size=500)]  # a map sorted by the score
    neighbours = map_neighbours(layout, 10)
    assert score_agreement(neighbours, scores) > 0.99
    assert abs(score_agreement(neighbours, rng.permutation(scores))) < 0.15
    assert score_agreement(neighbours, np.ones(500)) == 0.0, "a constant says nothing"


def test_map_neighbours_never_include_the_point_itself():
    from qwen_assets.pipeline.metrics import map_neighbours

    layout = np.random.default_rng(7).normal(size=(50, 2))
    neighbours = map_neighbours(layout, 5)
    assert neighbours.shape == (50, 5)
    assert not (neighbours == np.arange(50)[:, None]).any()


def test_the_headline_says_the_change_in_its_own_units_and_whether_chance_explains_it():
    """A headline gives the difference in the figure's units (no percentages of tiny
    figures) and sets it against what shuffled scores give: neighbourhoods sorted by a score
    differ from random ones beyond chance; two random sets of neighbourhoods do not."""
    from qwen_assets.pipeline.metrics import (
        Headline,
        chance_difference,
        map_neighbours,
        score_agreement,
    )

    rng = np.random.default_rng(11)
    scores = rng.normal(size=400)
    by_score = map_neighbours(np.column_stack([scores, np.zeros(400)]), 10)
    random_a, random_b = (map_neighbours(rng.normal(size=(400, 2)), 10) for _ in range(2))

    def headline(neighbours, reference) -> Headline:
        chance = chance_difference(neighbours, reference, scores, category=False)
        return Headline(
            "sentiment",
            "sentiment",
            score_agreement(neighbours, scores),
            "default",
            score_agreement(reference, scores),
            chance,
        )

    real = headline(by_score, random_a)
    assert real.sentence().endswith("so this is beyond chance.")
    assert f"by {real.difference:+.3f} (rank agreement" in real.sentence()
    assert "%" not in real.sentence()
    # Random neighbourhoods against random ones: the real difference is one draw of the
    # shuffled ones, beyond the band about one time in twenty.
    pairs = [(map_neighbours(rng.normal(size=(400, 2)), 10), random_a) for _ in range(20)]
    noise = [headline(one, other) for one, other in pairs]
    beyond = [line for line in noise if line.sentence().endswith("so this is beyond chance.")]
    assert len(beyond) <= 3, [line.sentence() for line in beyond]
    assert all(0 < line.chance < 0.3 for line in noise), "chance moves a figure a little"
    assert chance_difference(random_a, random_a, scores, category=False) == 0, "itself: none"

    labels = rng.integers(0, 4, size=400)
    shuffled_labels = chance_difference(random_a, random_b, labels, category=True)
    assert 0 < shuffled_labels < 0.2
    assert "shuffled labels" in Headline("topic", "category", 0.5, "default", 0.4, 0.05).sentence()
