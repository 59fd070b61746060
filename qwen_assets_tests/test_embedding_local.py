"""The in-process backend on a real small model."""

import logging

import numpy as np

from qwen_assets.embedding import build_backend, embed_texts, resolve_backend
from qwen_assets.settings import parse_settings
from qwen_assets.testing import TEST_MAX_SEQ_LENGTH, minilm_path, settings_dict


def local_settings(**embedding):
    return parse_settings(
        settings_dict(
            embedding={
                "model": minilm_path(),
                "backend": "local",
                "local": {"device": "cpu", "max_seq_length": TEST_MAX_SEQ_LENGTH},
                **embedding,
            }
        )
    ).embedding


def test_a_paraphrase_is_nearer_than_an_unrelated_text(tmp_path):
    settings = local_settings()
    log = logging.getLogger("test")
    texts = [
        "The rocket launch was postponed because of high winds.",
        "Strong winds delayed the launch of the rocket.",
        "My doctor prescribed antibiotics for the infection.",
    ]
    vectors, stats = embed_texts(
        texts,
        "",
        settings,
        build_backend("local", settings, None, log),
        str(tmp_path / "c.duckdb"),
        log,
    )
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert stats.backend == "local" and stats.computed == 3


def test_the_instruction_changes_the_vectors(tmp_path):
    settings = local_settings()
    log = logging.getLogger("test")
    backend = build_backend("local", settings, None, log)
    cache = str(tmp_path / "c.duckdb")
    texts = ["The Mets won again last night."]
    plain, _ = embed_texts(texts, "", settings, backend, cache, log)
    instructed, _ = embed_texts(
        texts, "Instruct: Classify the sentiment\nQuery:", settings, backend, cache, log
    )
    assert float(plain[0] @ instructed[0]) < 0.999


def test_auto_backend_prefers_http_only_when_a_key_is_set():
    settings = parse_settings(settings_dict()).embedding
    assert resolve_backend(settings, {})[0] == "local"
    assert resolve_backend(settings, {"SILICONFLOW_API_KEY": "x"})[0] == "http"
    assert "not set" in resolve_backend(settings, {})[1]
