"""The loopback server's store of vectors (``stored_vectors``): a later session answers from
it without the model, and a store that no longer agrees with the model fails the session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_assets_tests.stored_vectors import StoredVectors


class Model:
    """Texts to vectors by a seed, counting the texts it was asked for."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self.encoded = seed, []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.encoded.extend(texts)
        return np.stack(
            [np.random.default_rng([self.seed, *map(ord, text)]).random(8) for text in texts]
        ).astype(np.float32)


TEXTS = [f"post number {n}" for n in range(40)]


def test_a_later_session_answers_from_the_store_and_checks_a_sample(tmp_path: Path):
    first_model = Model()
    first = StoredVectors(first_model, tmp_path)
    answered = first(TEXTS)
    assert first_model.encoded == TEXTS
    first.save()

    model = Model()
    later = StoredVectors(model, tmp_path, spot_checks=5)
    again = later(TEXTS)
    np.testing.assert_array_equal(again, answered)
    assert len(model.encoded) == 5, "only the spot checks asked the model"
    later(TEXTS)
    assert len(model.encoded) == 5, "checked once a session"


def test_a_store_the_model_no_longer_agrees_with_fails_the_session(tmp_path: Path):
    first = StoredVectors(Model(seed=1), tmp_path)
    first(TEXTS)
    first.save()
    changed = StoredVectors(Model(seed=2), tmp_path, spot_checks=3)
    with pytest.raises(AssertionError, match="is not the model's: delete"):
        changed(TEXTS[:10])


def test_a_damaged_file_is_skipped_and_replaced_at_the_next_save(tmp_path: Path):
    first = StoredVectors(Model(), tmp_path)
    first(TEXTS[:10])
    first.save()
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04 half a file")
    model = Model()
    later = StoredVectors(model, tmp_path, spot_checks=0)
    later(TEXTS)
    assert model.encoded == TEXTS[10:], "what the good file holds is not asked again"
    later.save()
    assert len(list(tmp_path.glob("*.npz"))) == 1, "one file now holds everything"
    assert not list(tmp_path.glob("*.partial"))
