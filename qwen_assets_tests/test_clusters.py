"""Cluster labels of a map: dense regions found, each named by the words that set it apart."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_assets.pipeline.clusters import NOISE, cluster_map, distinctive_words, min_cluster_size

TOPICS = {
    "space": ["orbit", "shuttle", "launch", "nasa"],
    "hockey": ["goalie", "puck", "playoffs", "rink"],
    "crypto": ["encryption", "clipper", "keys", "escrow"],
}
SHARED = ["people", "think", "really", "thing", "said", "know"]


def blob_map(seed: int = 0, per_topic: int = 60):
    """Three far-apart blobs; each blob's posts draw on its topic's words and shared words."""
    rng = np.random.default_rng(seed)
    centres = {"space": (0.0, 0.0), "hockey": (20.0, 0.0), "crypto": (10.0, 18.0)}
    coordinates, texts, topics = [], [], []
    for topic, words in TOPICS.items():
        for _ in range(per_topic):
            coordinates.append(rng.normal(centres[topic], 1.0))
            chosen = rng.choice(words, 3).tolist() + rng.choice(SHARED, 6).tolist()
            texts.append(" ".join(rng.permutation(chosen)))
            topics.append(topic)
    return np.array(coordinates), texts, np.array(topics)


def test_each_blob_is_one_cluster_named_by_its_own_words():
    coordinates, texts, topics = blob_map()
    found = cluster_map(coordinates, texts, min_size=10, words=3)

    assert len(found.clusters) == len(TOPICS)
    for cluster in found.clusters:
        members = topics[found.membership == cluster.number]
        (topic,) = set(members.tolist())  # a cluster never mixes blobs
        assert cluster.size == len(members)
        assert set(cluster.words) <= set(TOPICS[topic]), cluster.words
        assert not set(cluster.words) & set(SHARED), "a word shared by every blob sets none apart"


def test_a_label_sits_on_one_of_its_own_members():
    coordinates, texts, _ = blob_map(seed=3)
    found = cluster_map(coordinates, texts, min_size=10, words=2)
    for cluster in found.clusters:
        at = np.flatnonzero((coordinates == (cluster.x, cluster.y)).all(axis=1))
        assert len(at) and found.membership[at[0]] == cluster.number


def test_moving_the_map_moves_the_labels_not_the_words():
    coordinates, texts, _ = blob_map(seed=5)
    before = cluster_map(coordinates, texts, min_size=10, words=3)
    after = cluster_map(coordinates + np.array([100.0, -40.0]), texts, min_size=10, words=3)
    assert [c.words for c in before.clusters] == [c.words for c in after.clusters]
    assert [c.x + 100.0 for c in before.clusters] == pytest.approx([c.x for c in after.clusters])


def test_a_map_too_small_or_wordless_gets_no_labels_and_no_error():
    few = cluster_map(np.zeros((4, 2)), ["a"] * 4, min_size=5, words=3)
    assert few.clusters == [] and (few.membership == NOISE).all()
    coordinates, _, _ = blob_map()
    numbers_only = ["1234 5678 99"] * len(coordinates)
    found = cluster_map(coordinates, numbers_only, min_size=10, words=3)
    assert found.clusters and all(c.words == () for c in found.clusters)
    assert found.clusters[0].label.startswith("cluster ")


def test_distinctive_words_ignore_the_unclustered_posts_but_count_them_as_background():
    texts = ["orbit orbit launch people"] * 5 + ["people people orbit"] * 20
    membership = np.array([0] * 5 + [NOISE] * 20)
    assert distinctive_words(texts, membership, 2) == {0: ("launch", "orbit")}


def test_min_cluster_size_grows_with_the_map():
    assert min_cluster_size(100, 0.02) < min_cluster_size(17_000, 0.02)
    assert min_cluster_size(10, 0.02) >= 2
