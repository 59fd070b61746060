"""The HTTP backend against a real server on 127.0.0.1 serving real model vectors."""

import logging
import math
import time

import duckdb
import numpy as np
import pytest

from qwen_assets.embedding import (
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingResponseError,
    embed_texts,
)
from qwen_assets.embedding.http import HttpBackend
from qwen_assets.settings import parse_settings
from qwen_assets.testing import settings_dict
from qwen_assets.testing.embedding_server import Fault

TEXTS = [
    f"Post number {i} about {topic}."
    for i, topic in enumerate(["space", "cars", "medicine", "guns"] * 10)
]
FAKE_KEY = "sk-test-RECOGNISABLE-0123456789"


def settings_for(server, **http):
    raw = settings_dict(
        embedding={
            "model": "minilm",
            "backend": "http",
            "batch_size": 8,
            "http": {"base_url": server.base_url, "max_attempts": 3, "timeout_seconds": 5, **http},
        }
    )
    return parse_settings(raw).embedding


def run(server, cache, texts=TEXTS, prefix="", api_key=None, log=None, **http):
    settings = settings_for(server, **http)
    log = log or logging.getLogger("test")
    backend = HttpBackend(settings.http, settings.model, settings.dimensions, api_key, log)
    return embed_texts(texts, prefix, settings, backend, cache, log)


def cached_rows(cache: str) -> int:
    with duckdb.connect(cache, read_only=True) as connection:
        return connection.execute("SELECT count(*) FROM embedding_cache").fetchall()[0][0]


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache.duckdb")


def test_vectors_match_the_model_in_order_and_a_rerun_costs_nothing(fresh_server, minilm, cache):
    vectors, stats = run(fresh_server, cache)
    expected = minilm.encode(TEXTS, normalize_embeddings=True)
    assert vectors.shape == expected.shape
    assert np.allclose(vectors, expected, atol=1e-5)
    assert stats.requests == math.ceil(len(TEXTS) / 8) and stats.tokens > 0
    fresh_server.reset()
    again, stats = run(fresh_server, cache)
    assert fresh_server.received == [] and stats.cache_hits == len(TEXTS) and stats.requests == 0
    assert np.array_equal(again, vectors)


def test_base64_encoding_gives_the_same_vectors(fresh_server, cache, tmp_path):
    floats, _ = run(fresh_server, cache)
    decoded, _ = run(fresh_server, str(tmp_path / "other.duckdb"), encoding_format="base64")
    assert np.allclose(floats, decoded, atol=1e-6)


# A hung request is given up on after HUNG_TIMEOUT; a normal one answers well within it even on
# a loaded machine, and the other faults allow far longer, so only the fault is retried.
HUNG_TIMEOUT = 3.0


@pytest.mark.parametrize(
    ("fault", "timeout"),
    [
        (Fault(status=429, retry_after="0"), 60),
        (Fault(status=429), 60),
        (Fault(status=500), 60),
        (Fault(status=503, retry_after="0"), 60),
        (Fault(hang_seconds=60), HUNG_TIMEOUT),
    ],
    ids=["429-retry-after", "429", "500", "503", "hung"],
)
def test_transient_faults_are_retried_and_lose_nothing(fresh_server, cache, fault, timeout):
    fresh_server.faults.append(fault)
    vectors, stats = run(fresh_server, cache, timeout_seconds=timeout)
    assert stats.retries == 1
    assert vectors.shape[0] == len(TEXTS) and cached_rows(cache) == len(TEXTS)
    assert sorted(fresh_server.texts_received) == sorted(TEXTS), "each text embedded exactly once"


def test_retry_after_is_honoured(fresh_server, cache):
    import time

    fresh_server.faults.append(Fault(status=429, retry_after="2"))
    started = time.monotonic()
    run(fresh_server, cache)
    assert time.monotonic() - started >= 2


def test_a_batch_too_large_is_split_in_half(fresh_server, cache):
    fresh_server.faults.append(Fault(status=413))
    vectors, _ = run(fresh_server, cache)
    assert vectors.shape[0] == len(TEXTS)
    assert sorted(len(batch) for batch in fresh_server.received)[:2] == [4, 4]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (Fault(drop_vector=True), "got 7 vectors for 8 texts|indices"),
        (Fault(nan=True), "NaN"),
        (Fault(wrong_dimension=True), "dimensions, expected"),
        (Fault(zero_vector=True), "1 all-zero vector"),
    ],
    ids=["missing-vector", "nan", "wrong-dimension", "zero-vector"],
)
def test_a_malformed_batch_is_refused_and_never_cached(fresh_server, cache, fault, says):
    # The first batch is sent alone; the bad answer comes second, once the dimension is known.
    fresh_server.faults.extend([Fault(), fault])
    with pytest.raises(EmbeddingResponseError, match=says) as caught:
        run(fresh_server, cache, max_in_flight=1)
    assert "batch" in str(caught.value) and "cached" in str(caught.value)
    assert cached_rows(cache) == 8, "only the good first batch is kept"


def test_giving_up_says_the_status_and_what_was_kept(fresh_server, cache):
    fresh_server.faults.extend([Fault()] + [Fault(status=503, retry_after="0")] * 3)
    with pytest.raises(
        EmbeddingError, match=r"HTTP 503.*8 of 40 new texts were embedded and are cached"
    ):
        run(fresh_server, cache, max_in_flight=1)


def test_a_refused_key_fails_on_the_first_request(fresh_server, cache):
    fresh_server.api_key = "the-right-key"
    with pytest.raises(EmbeddingConfigError, match="refused the API key from SILICONFLOW_API_KEY"):
        run(fresh_server, cache, api_key=FAKE_KEY)
    assert len(fresh_server.statuses) == 1


def test_a_missing_key_for_a_remote_api_fails_before_any_request():
    settings = parse_settings(settings_dict()).embedding
    with pytest.raises(
        EmbeddingConfigError, match="set the environment variable SILICONFLOW_API_KEY"
    ):
        HttpBackend(settings.http, settings.model, None, None, logging.getLogger("test"))


def test_an_interrupted_run_resumes_without_paying_twice(fresh_server, cache):
    fresh_server.faults.extend([Fault(), Fault(), Fault(status=400, message="boom")])
    with pytest.raises(EmbeddingError):
        run(fresh_server, cache, max_in_flight=1)
    assert cached_rows(cache) == 16
    vectors, stats = run(fresh_server, cache)
    assert stats.cache_hits == 16 and vectors.shape[0] == len(TEXTS)
    assert sorted(fresh_server.texts_received) == sorted(TEXTS), (
        "the server saw each text exactly once"
    )


def test_the_key_never_reaches_logs_errors_or_the_database(fresh_server, cache, caplog):
    fresh_server.api_key = FAKE_KEY
    fresh_server.faults.extend(
        [
            Fault(status=500, message=f"echoing {FAKE_KEY}"),
            Fault(),
            Fault(status=418, message=f"bad {FAKE_KEY}"),
        ]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EmbeddingError) as caught:
        run(fresh_server, cache, api_key=FAKE_KEY, max_in_flight=1)
    assert fresh_server.headers_seen[0]["authorization"] == f"Bearer {FAKE_KEY}"
    assert FAKE_KEY not in str(caught.value)
    assert FAKE_KEY not in caplog.text
    with duckdb.connect(cache, read_only=True) as connection:
        dump = str(connection.execute("SELECT * FROM embedding_cache").fetchall())
    assert FAKE_KEY not in dump


def test_matryoshka_dimensions_truncate_and_renormalise(fresh_server, cache):
    settings = parse_settings(
        settings_dict(
            embedding={
                "model": "minilm",
                "dimensions": 64,
                "http": {"base_url": fresh_server.base_url},
            }
        )
    ).embedding
    backend = HttpBackend(
        settings.http, settings.model, settings.dimensions, None, logging.getLogger("t")
    )
    vectors, _ = embed_texts(TEXTS, "", settings, backend, cache, logging.getLogger("t"))
    assert vectors.shape == (len(TEXTS), 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_the_request_budget_spaces_requests_evenly(fresh_server, cache):
    run(fresh_server, cache, requests_per_minute=300)  # 5 requests, one per 0.2 s
    assert len(fresh_server.received) == math.ceil(len(TEXTS) / 8) == 5
    gaps = np.diff(fresh_server.arrivals)
    # What the server saw: never two requests closer than the budget allows (a little less,
    # for the clocks of two threads), however fast or slow the machine.
    assert gaps.min() >= 0.2 * 0.9, f"requests came {gaps.min():.3f}s apart, budget 0.2s"


def test_a_hung_request_given_up_on_is_never_counted_later(fresh_server, cache):
    """The server's records belong to the test that made the requests: a request the client
    gave up on leaves no answer behind to land in a later test's counts."""
    fresh_server.faults.append(Fault(hang_seconds=HUNG_TIMEOUT + 1))
    run(fresh_server, cache, timeout_seconds=HUNG_TIMEOUT)
    statuses = list(fresh_server.statuses)
    time.sleep(1.5)  # past the end of the hang: an answer would have been recorded by now
    assert fresh_server.statuses == statuses, "the given-up request recorded nothing"
    assert len(fresh_server.headers_seen) == len(statuses) + 1, "it was seen, not answered"
    assert sorted(fresh_server.texts_received) == sorted(TEXTS), "each text counted once"
