"""The HTTP backend against a real server on 127.0.0.1 serving real model vectors."""

import asyncio
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest

from qwen_assets.cli import BuildDisplay
from qwen_assets.pipeline.embedding import (
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingResponseError,
    embed_texts,
)
from qwen_assets.pipeline.embedding.core import PROGRESS_LOGGER
from qwen_assets.pipeline.embedding.core import _run as run_coroutine
from qwen_assets.pipeline.embedding.http import HttpBackend
from qwen_assets.pipeline.embedding.in_flight import RECENT, InFlightLimit
from qwen_assets.settings import parse_settings
from qwen_assets.testing import settings_dict
from qwen_assets.testing.embedding_server import EmbeddingServer, Fault
from qwen_assets_tests.conftest import SmallDisk

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


# A hung request is given up on after HUNG_TIMEOUT, which applies to every request of the run:
# a normal one (answered from the server's memory) takes milliseconds, so even a machine whose
# cores the other tests keep busy answers it many times over within 10 s, and only the fault
# is retried. The other faults allow far longer.
HUNG_TIMEOUT = 10.0


@pytest.mark.parametrize(
    ("fault", "timeout"),
    [
        (Fault(status=429, retry_after="0"), 60),
        (Fault(status=429), 60),
        (Fault(status=500), 60),
        (Fault(status=503, retry_after="0"), 60),
        (Fault(hang_seconds=120), HUNG_TIMEOUT),
    ],
    ids=["429-retry-after", "429", "500", "503", "hung"],
)
def test_transient_faults_are_retried_and_lose_nothing(fresh_server, cache, fault, timeout):
    fresh_server.vectorise(TEXTS)  # known before the run: every answer comes from memory
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


def test_a_long_retry_after_is_said_where_people_look(fresh_server, cache, monkeypatch, caplog):
    from qwen_assets.pipeline.embedding import http

    monkeypatch.setattr(http, "MAX_RETRY_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(http, "SAID_WAIT_SECONDS", 0.2)
    fresh_server.faults.append(Fault(status=429, retry_after="100000"))
    caplog.set_level(logging.INFO, logger="qwen_assets.progress")
    run(fresh_server, cache)
    notes = [r.embedding_note for r in caplog.records if hasattr(r, "embedding_note")]
    assert [note for note in notes if note.startswith("batch")] == [
        "batch 1: the server asks to wait 100000s (HTTP 429, Retry-After); "
        "waiting 0.5s, the most this client waits"
    ]


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
        (Fault(zero_vector=True), "1 all-zero vector"),
        (Fault(same_vector=True), "one vector for 8 different texts"),
    ],
    ids=["missing-vector", "nan", "zero-vector", "one-vector-for-all"],
)
def test_a_malformed_batch_is_refused_and_never_cached(fresh_server, cache, fault, says):
    fresh_server.faults.extend([Fault(), fault])
    with pytest.raises(EmbeddingResponseError, match=says) as caught:
        run(fresh_server, cache, max_in_flight=1)
    assert "batch" in str(caught.value) and "cached" in str(caught.value)
    assert cached_rows(cache) == 8, "only the good first batch is kept"


def cached_sizes(cache: str) -> list[int]:
    with duckdb.connect(cache, read_only=True) as connection:
        rows = connection.execute("SELECT DISTINCT len(embedding) FROM embedding_cache").fetchall()
    return sorted(row[0] for row in rows)


def test_a_wrong_size_first_answer_never_enters_the_cache(fresh_server, cache, minilm):
    """The first batch comes back at half the size: the answers after it outvote it, it is
    refused, every other answer is cached, and a rerun asks only for its texts."""
    size = minilm.get_sentence_embedding_dimension()
    fresh_server.faults.append(Fault(wrong_dimension=True))
    with pytest.raises(EmbeddingResponseError) as caught:
        run(fresh_server, cache)
    said = str(caught.value)
    assert (
        f"batch 1: vectors have {size // 2} dimensions where the other answers have {size}" in said
    )
    assert "32 of 40 new texts were embedded and are cached; a rerun asks only for the rest" in said
    assert cached_sizes(cache) == [size] and cached_rows(cache) == 32
    first = fresh_server.received[0]
    fresh_server.reset()
    vectors, stats = run(fresh_server, cache)
    assert fresh_server.received == [first], "the rerun asks only for the refused batch"
    assert vectors.shape == (len(TEXTS), size) and stats.cache_hits == 32


def test_two_answers_of_two_sizes_are_settled_by_asking_one_text_again(fresh_server, cache, minilm):
    size = minilm.get_sentence_embedding_dimension()
    fresh_server.faults.append(Fault(wrong_dimension=True))
    with pytest.raises(EmbeddingResponseError, match=f"where the other answers have {size}"):
        run(fresh_server, cache, texts=TEXTS[:16])
    assert cached_sizes(cache) == [size] and cached_rows(cache) == 8
    assert [len(batch) for batch in fresh_server.received[2:]] == [1, 1], "two one-text checks"


def test_wrong_size_vectors_an_older_release_cached_are_asked_for_again(
    fresh_server, cache, minilm
):
    from qwen_assets.pipeline.embedding.cache import EmbeddingCache, prompt_key

    size = minilm.get_sentence_embedding_dimension()
    poisoned = EmbeddingCache(cache, "minilm", None)
    poisoned.store([prompt_key(text) for text in TEXTS[:8]], np.ones((8, size // 2), np.float32))
    vectors, _ = run(fresh_server, cache)
    assert vectors.shape == (len(TEXTS), size)
    assert cached_sizes(cache) == [size] and cached_rows(cache) == len(TEXTS)
    assert sorted(fresh_server.texts_received) == sorted(TEXTS), "the 8 poisoned asked again"
    fresh_server.reset()
    run(fresh_server, cache)
    assert fresh_server.received == []


def test_a_bad_batch_does_not_throw_away_the_answers_in_flight_beside_it(fresh_server, cache):
    """NaN in batch 2 while batch 3 is in flight: batch 3 was paid for, so it is cached."""
    fresh_server.faults.extend([Fault(), Fault(nan=True), Fault()])
    with pytest.raises(EmbeddingResponseError, match=r"NaN.*16 of 40 new texts"):
        run(fresh_server, cache, max_in_flight=2)
    assert cached_rows(cache) == 16


def test_an_unreadable_cache_is_moved_aside_with_one_line(fresh_server, cache, caplog):

    run(fresh_server, cache)
    path = Path(cache)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    fresh_server.reset()
    caplog.set_level(logging.INFO, logger="qwen_assets.progress")
    vectors, stats = run(fresh_server, cache)
    assert vectors.shape[0] == len(TEXTS) and stats.computed == len(TEXTS)
    (aside,) = path.parent.glob("cache.duckdb.damaged-*")
    (said,) = [r.embedding_note for r in caplog.records if hasattr(r, "embedding_note")]
    assert said.startswith(f"the embedding cache {cache} cannot be read (")
    assert said.endswith(f": moved it to {aside}; its vectors are asked for again")
    assert cached_rows(cache) == len(TEXTS), "a new cache holds what this run was answered"


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (500, r"gave up after 3 attempts, last HTTP 500"),
        (
            503,
            r"gave up after \d+ attempts, with no batch answered for \d+s "
            r"\(embedding.http.patience_seconds = 1\), last HTTP 503",
        ),
    ],
)
def test_giving_up_says_the_status_and_what_was_kept(fresh_server, cache, status, said):
    """A 500 fails this request outright: max_attempts tries. A 503 says the server is behind:
    tried on until it has answered nothing for patience_seconds."""
    fresh_server.faults.extend([Fault()] + [Fault(status=status, retry_after="0.1")] * 60)
    with pytest.raises(
        EmbeddingError, match=said + r".*8 of 40 new texts were embedded and are cached"
    ) as caught:
        run(fresh_server, cache, max_in_flight=1, patience_seconds=1)
    attempts = int(re.search(r"gave up after (\d+) attempts", str(caught.value)).group(1))
    assert attempts == 3 if status == 500 else attempts > 3, attempts


def test_a_server_behind_is_tried_past_max_attempts_while_it_answers(fresh_server, cache):
    """Six 503s for one batch, three attempts allowed: the server answered moments ago, so
    waiting helps, and the build finishes."""
    fresh_server.faults.extend([Fault()] + [Fault(status=503, retry_after="0")] * 6)
    vectors, stats = run(fresh_server, cache, max_in_flight=1)
    assert len(vectors) == len(TEXTS) and stats.retries == 6


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
    fresh_server.vectorise(TEXTS)  # known before the run: every answer comes from memory
    fresh_server.faults.append(Fault(hang_seconds=HUNG_TIMEOUT + 1))
    run(fresh_server, cache, timeout_seconds=HUNG_TIMEOUT)
    statuses = list(fresh_server.statuses)
    fresh_server.wait_idle()  # the hung request is over: an answer would be recorded now
    assert fresh_server.statuses == statuses, "the given-up request recorded nothing"
    assert len(fresh_server.headers_seen) == len(statuses) + 1, "it was seen, not answered"
    assert sorted(fresh_server.texts_received) == sorted(TEXTS), "each text counted once"


def embed_in_background(server, cache, texts=TEXTS):
    """Start a run that waits on the (held) server; returns its thread and what it ended with."""
    import threading

    ended: dict[str, object] = {}

    def target() -> None:
        try:
            ended["result"] = run(server, cache, texts=texts)
        except Exception as error:
            ended["error"] = error

    server.hold()
    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.waiting:
        assert time.monotonic() < deadline, "the run never asked"
        time.sleep(0.02)
    return thread, ended


def test_answers_arriving_while_a_reader_holds_the_cache_are_cached_once_it_lets_go(
    fresh_server, cache
):
    import subprocess
    import sys

    run(fresh_server, cache, texts=TEXTS[:8])
    fresh_server.reset()
    thread, ended = embed_in_background(fresh_server, cache)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); sys.stdin.readline()",
            cache,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "open"
    fresh_server.release()
    deadline = time.monotonic() + 60
    while len(fresh_server.texts_received) < len(TEXTS) - 8:
        assert time.monotonic() < deadline, "the answers never came"
        time.sleep(0.05)
    time.sleep(1.0)  # the run is answered and finds the cache held
    reader.communicate("\n", timeout=30)
    thread.join(timeout=60)
    assert "error" not in ended, ended
    assert cached_rows(cache) == len(TEXTS), "every answer was cached once the reader let go"


def test_a_disk_that_fills_mid_run_loses_what_was_cached_and_says_so(fresh_server, tmp_path):
    """A real full disk (a small tmpfs): the run ends with one line saying how many answers
    could not be kept and why; what was cached before stays, and a rerun once there is room
    asks only for the rest."""
    with SmallDisk(tmp_path / "disk", megabytes=3) as disk:
        cache = str(disk.path / "cache.duckdb")
        run(fresh_server, cache, texts=TEXTS[:8])
        fresh_server.reset()
        thread, ended = embed_in_background(fresh_server, cache)
        disk.fill()
        fresh_server.release()
        thread.join(timeout=120)
        said = str(ended.get("error"))
        assert "answered vectors could not be written to the embedding cache" in said, said
        assert f"no space left on the disk of {disk.path}" in said and "\n" not in said
        disk.free()
        kept = cached_rows(cache)
        assert kept >= 8, "what was cached before the disk filled is still there"
        fresh_server.reset()
        vectors, _ = run(fresh_server, cache)
        assert vectors.shape[0] == len(TEXTS)
        assert len(fresh_server.texts_received) == len(TEXTS) - kept, "only the rest is asked"


def test_a_key_in_the_url_or_echoed_altered_by_the_server_is_redacted(fresh_server, cache, caplog):
    """A key written into base_url, and a server that echoes a near-copy of the key in its
    errors: neither reaches the error, the log or the cache."""
    in_url = "sk-canary-in-url-7788990011"
    near_copy = FAKE_KEY[:-4] + "WXYZ"
    url = fresh_server.base_url.replace("http://", f"http://someone:{in_url}@")
    fresh_server.faults.extend(
        [
            Fault(status=500, message=f"quota exceeded for {near_copy}"),
            Fault(status=418, message=f"unknown key {near_copy}"),
        ]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EmbeddingError) as caught:
        run(fresh_server, cache, api_key=FAKE_KEY, base_url=url, max_in_flight=1)
    said = str(caught.value)
    assert "HTTP 418 from http://***@127.0.0.1" in said
    for text in (said, caplog.text):
        assert in_url not in text and near_copy not in text and FAKE_KEY not in text


@pytest.mark.parametrize(
    ("detail", "about_the_model"),
    [
        ("The model `qwen-x` does not exist", True),
        ("model_not_found", True),
        ("Unknown model: qwen-x", True),
        ("input must be a list; see the model card for limits", False),
    ],
)
def test_only_a_400_about_the_model_is_reported_as_a_missing_model(
    fresh_server, cache, detail, about_the_model
):
    fresh_server.faults.append(Fault(status=400, message=detail))
    with pytest.raises(EmbeddingError) as caught:
        run(fresh_server, cache)
    assert ("does not serve the model" in str(caught.value)) is about_the_model
    assert detail in str(caught.value)


def test_the_run_log_says_measuring_speed_until_a_speed_is_known(monkeypatch):
    """The line the Dagster UI shows: no "0.0 texts/s, about unknown time left" before the
    second batch, a speed and the time left once there is one."""
    import logging

    from qwen_assets.pipeline.embedding import core

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("test-progress")
    log.addHandler(Collect())
    log.setLevel(logging.INFO)
    now = [100.0]
    monkeypatch.setattr(core.time, "monotonic", lambda: now[0])
    stats = core.EmbeddingStats(backend="http", model="m", computed=32)
    progress = core.Progress(stats, log, to_compute=96, interval=0.0)
    progress.update()  # the first batch: no speed yet
    stats.computed, now[0] = 64, 104.0
    progress.update()  # 32 texts in 4 s
    assert "measuring speed" in lines[0] and "texts/s" not in lines[0], lines[0]
    assert "8.0 texts/s, about 4s left" in lines[1], lines[1]


def cheap_vectors(texts: list[str]) -> np.ndarray:
    """Vectors at no cost, for a server whose time is all in its modelled compute."""
    return np.asarray([[len(text), 1.0, i % 3] for i, text in enumerate(texts)], np.float32)


def test_the_loopback_server_models_a_busy_self_hosted_one(cache):
    """What the slow-server benchmark leans on: a server of one worker computes a request its
    client gave up on to the end, so the retry queues behind it and the texts are computed
    twice; with a request queued past its limit it answers 503."""

    batch = TEXTS[:8]
    server = EmbeddingServer(
        cheap_vectors, workers=1, seconds_per_text=0.1
    ).start()  # 0.8 s a batch
    try:
        with pytest.raises(EmbeddingError, match=r"gave up after 2 attempts, .* last ReadTimeout"):
            run(server, cache, texts=batch, timeout_seconds=0.3, max_attempts=2, patience_seconds=0)
        server.wait_idle()
        assert server.abandoned == 2, "both attempts were computed after the client left"
        assert all(server.computed[text] == 2 for text in batch), server.computed

        server.queue_limit = 0  # nothing may wait for the busy worker
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            body = {"model": "m", "input": batch}
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(client.post, "/embeddings", json=body)
                time.sleep(0.2)  # the first holds the worker
                second = pool.submit(client.post, "/embeddings", json=body)
                statuses = sorted([first.result().status_code, second.result().status_code])
        assert statuses == [200, 503]
    finally:
        server.stop()


def test_a_server_slower_than_the_timeout_slows_the_build_and_never_fails_it(cache, caplog, capsys):
    """A self-hosted server whose one answer takes longer than the client's timeout: the
    client sends fewer requests at once, gives a batch that timed out more time (past
    max_attempts: the server is answering), and finishes, with at most the first batch's
    two tries left computing on the server. The command line and the metadata say so."""

    # Two workers; a batch of 8 takes 0.5 s, more than the client's 0.2 s timeout.
    server = EmbeddingServer(cheap_vectors, workers=2, seconds_per_text=0.5 / 8).start()
    display = BuildDisplay(live=False)
    PROGRESS_LOGGER.addHandler(display)
    try:
        with caplog.at_level(logging.INFO):
            vectors, stats = run(
                server, cache, timeout_seconds=0.2, max_attempts=2, max_in_flight=4
            )
        assert len(vectors) == len(TEXTS)
        assert cached_rows(cache) == len(TEXTS)
        server.wait_idle()
        assert server.abandoned <= 2, server.abandoned
    finally:
        PROGRESS_LOGGER.removeHandler(display)
        display.finish()
        server.stop()
    said = capsys.readouterr().out
    assert "server slowing: 4 → 2 in flight (a request timed out" in said
    assert "server slowing: 4 → 2 in flight" in caplog.text, "the run's log says it too"
    quarters = [line for line in said.splitlines() if re.search(rf"\d+/{len(TEXTS)} texts", line)]
    assert quarters and all(re.search(r"retries, [1-4] in flight$", line) for line in quarters)
    metadata = stats.as_metadata()
    assert metadata["in_flight_limits"].startswith("4 → 2"), metadata
    assert metadata["timeouts"] >= 2 and metadata["retries"] >= 2, metadata
    assert 0.2 < metadata["latency_p50_seconds"] <= metadata["latency_p95_seconds"], metadata


def test_a_server_that_answers_503_under_load_is_sent_less_and_never_fails_the_build(cache, caplog):
    """Two workers and room for two more in the queue: at 8 in flight the rest are turned
    away with 503. The client sends fewer at once, retries each rejected batch (past
    max_attempts: the server is answering others), and no text is computed twice."""
    texts = [f"text {number} of a busy server" for number in range(160)]  # 20 batches of 8
    server = EmbeddingServer(
        cheap_vectors, workers=2, seconds_per_text=0.2 / 8, queue_limit=2
    ).start()
    try:
        with caplog.at_level(logging.INFO):
            vectors, stats = run(server, cache, texts=texts, max_in_flight=8, max_attempts=2)
        server.wait_idle()
        rejected = server.statuses.count(503)
    finally:
        server.stop()
    assert len(vectors) == len(texts) and cached_rows(cache) == len(texts)
    assert rejected >= 1 and stats.retries == rejected, (rejected, stats.retries)
    assert "server slowing: 8 → 5 in flight (HTTP 503)" in caplog.text
    assert set(server.computed.values()) == {1}, "a batch turned away was never computed"


def test_the_in_flight_limit_falls_once_a_burst_and_grows_back_a_window_at_a_time():
    said: list[str] = []
    logged: list[str] = []
    limit = InFlightLimit(most=8, timeout_seconds=10.0, say=said.append, log=logged.append)
    limit.answered(0.5, 32, epoch=0)  # fast, and quiet (under a tenth of the timeout)
    limit.answered(0.9, 32, epoch=0)  # slower than the fastest, but still quiet: no change
    assert limit.allowed == 8

    for _ in range(5):  # five requests of one burst time out: one halving
        limit.behind("a request timed out", epoch=0)
    assert limit.allowed == 4 and said == ["server slowing: 8 → 4 in flight (a request timed out)"]
    limit.answered(0.5, 32, epoch=0)  # sent before the decrease: it says nothing of 4
    assert limit.allowed == 4

    for _ in range(4):  # a window of 4 good answers at 4: one more
        limit.answered(0.5, 32, epoch=limit.epoch)
    assert limit.allowed == 5 and logged[-1] == "server keeping up: 5 in flight"

    limit.answered(4.0, 32, epoch=limit.epoch)  # 8x the fastest, and over a tenth of 10 s
    assert limit.allowed == 3, "queueing: 0.7 of 5"
    assert "slower than the fastest recent one" in logged[-1] and len(said) == 1, "only logged"

    for _ in range(RECENT):  # the server settles at that speed: once the fast answers are
        limit.answered(4.0, 32, epoch=limit.epoch)  # out of the recent ones, it is the norm
    settled = limit.allowed
    for _ in range(10):
        limit.answered(4.0, 32, epoch=limit.epoch)
    assert limit.allowed > settled, "answers as slow as the recent ones are good answers"
    assert limit.traffic.limits[:4] == [8, 4, 5, 3] and limit.traffic.in_flight == limit.allowed
    assert limit.timeout_for(32, timeouts_before=1) >= 2 * limit.timeout_for(32, 0)


def test_the_limit_makes_requests_wait_in_each_event_loop_it_is_bound_to():
    """Each call of the backend runs its own event loop (the size probes and the re-asks
    after the main run do), and binds the limit to it first: a request waits for a place in
    the second loop as in the first, instead of failing on the first loop's condition."""
    limit = InFlightLimit(most=1, timeout_seconds=10.0, say=lambda line: None)

    async def a_request_waits() -> None:
        limit.bind()  # as HttpBackend.embed_batches does
        await limit.acquire()
        second = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0.05)
        assert not second.done(), "one place: the second request waits"
        await limit.release()
        await second
        await limit.release()

    # As the backend runs each call: in a thread of its own where the caller's thread already
    # runs a loop (a session browser's, a notebook's).
    for _ in range(2):
        run_coroutine(a_request_waits())
