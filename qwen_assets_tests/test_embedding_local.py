"""The in-process backend on a real small model, in both runtimes."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_assets.pipeline.embedding import (
    EmbeddingConfigError,
    EmbeddingError,
    build_backend,
    embed_texts,
    hardware,
    quantized,
    resolve_backend,
)
from qwen_assets.pipeline.embedding.cache import TABLE
from qwen_assets.pipeline.embedding.hardware import resolve_runtime
from qwen_assets.pipeline.embedding.identity import task_version
from qwen_assets.pipeline.embedding.local import token_batches
from qwen_assets.pipeline.metrics import agreement
from qwen_assets.pipeline.storage import read_table
from qwen_assets.settings import parse_settings
from qwen_assets.testing import SUITE_MAX_SEQ_LENGTH, minilm_path, settings_dict

TOPIC_PREFIX = "Instruct: Identify the topic or theme of the given text\nQuery:"


LOG = logging.getLogger("test")


def local_settings(
    runtime="torch", exported_models="data/models", batch_tokens="auto", **embedding
):
    local = {
        "device": "cpu",
        "max_seq_length": SUITE_MAX_SEQ_LENGTH,
        "runtime": runtime,
        "exported_models": str(exported_models),
        "batch_tokens": batch_tokens,
    }
    return parse_settings(
        settings_dict(
            embedding={"model": minilm_path(), "backend": "local", "local": local, **embedding}
        )
    ).embedding


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory) -> Path:
    """Where the int8 export of the small model is kept: made by the first test that needs it."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sample_texts(built) -> list[str]:
    return read_table(built.database, "SELECT text FROM newsgroups_sample ORDER BY position")[
        "text"
    ].tolist()


def embed(texts, settings, cache, log=None, prefix=TOPIC_PREFIX):
    log = log or logging.getLogger("test")
    backend = build_backend("local", settings, None, log)
    return embed_texts(texts, prefix, settings, backend, str(cache), log)


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


def test_an_instruction_that_fills_the_token_limit_is_refused_before_any_pass(tmp_path):
    """Behind the model's limit every text is cut away and every vector is the same: the
    backend says so and how far over it is, and embeds nothing."""
    settings = local_settings()
    long = "Instruct: " + "Consider carefully what the given text says. " * 40 + "\nQuery:"
    assert len(long) < 2000, "within the settings' limit on an instruction's length"
    cache = tmp_path / "c.duckdb"
    with pytest.raises(EmbeddingConfigError, match=r"takes \d+ tokens of the model's limit of "):
        embed(["The Mets won again last night."], settings, cache, prefix=long)
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_name = 'embedding_cache'"
    assert not cache.exists() or read_table(str(cache), tables).iloc[0, 0] == 0


def test_auto_backend_prefers_http_only_when_a_key_is_set():
    settings = parse_settings(settings_dict()).embedding
    assert resolve_backend(settings, {})[0] == "local"
    assert resolve_backend(settings, {"SILICONFLOW_API_KEY": "x"})[0] == "http"
    assert "not set" in resolve_backend(settings, {})[1]


def test_the_int8_runtime_draws_the_same_maps_as_the_models_own_weights(
    built, sample_texts, exported_models, tmp_path
):
    # The build's topic vectors are the model's own float32 ones (the loopback server runs it).
    reference = np.stack(
        read_table(
            built.database,
            "SELECT e.embedding FROM task_embeddings e JOIN newsgroups_sample s USING (doc_id) "
            "WHERE e.task = 'topic' ORDER BY s.position",
        )["embedding"].to_numpy()
    )
    own, _ = embed(sample_texts[:16], local_settings(), tmp_path / "torch.duckdb")
    assert np.allclose(own, reference[:16], atol=1e-5), "the same vectors as in process"
    fast, stats = embed(
        sample_texts, local_settings("onnx-int8", exported_models), tmp_path / "int8.duckdb"
    )
    assert stats.computed == len(set(sample_texts)) and fast.shape == reference.shape
    assert np.allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    agreed = agreement(reference, fast, k=10)
    assert agreed.min_cosine >= 0.99, agreed
    assert agreed.neighbour_jaccard >= 0.9, agreed
    assert agreed.min_cosine < 1, "the int8 vectors differ from float32 ones, or nothing ran"


def test_two_runtimes_never_share_cached_vectors(sample_texts, exported_models, tmp_path):
    cache = tmp_path / "cache.duckdb"
    texts = sample_texts[:40]
    _, first = embed(texts, local_settings(), cache)
    _, second = embed(texts, local_settings("onnx-int8", exported_models), cache)
    assert (first.cache_hits, second.cache_hits) == (0, 0)
    assert second.model.endswith("(onnx-int8)")
    assert first.runs_on == (
        "local backend on cpu, float32, runtime torch (as set), batches of up to 8,192 tokens"
    )
    assert second.runs_on.startswith("local backend on cpu, 8-bit weights, runtime onnx-int8")
    for runtime in ("torch", "onnx-int8"):
        _, again = embed(texts, local_settings(runtime, exported_models), cache)
        assert (again.cache_hits, again.computed) == (40, 0), runtime
    rows = read_table(str(cache), f"SELECT model, count(*) AS n FROM {TABLE} GROUP BY model")
    assert sorted(rows["n"]) == [40, 40] and first.model in set(rows["model"])


def export_in_a_subprocess(folder: Path) -> subprocess.Popen:
    script = (
        # Ctrl-C as in a terminal, even where the suite runs with SIGINT ignored (a background
        # job without job control passes that on to every process it starts).
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import logging, sys; from pathlib import Path\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from qwen_assets.pipeline.embedding import quantized\n"
        "from qwen_assets.pipeline.embedding.local import load_model\n"
        f"model = load_model({minilm_path()!r}, 'cpu', {SUITE_MAX_SEQ_LENGTH})\n"
        f"print(quantized.exported_model('minilm', model, Path({str(folder)!r}), "
        "logging.getLogger('export')))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def stop_mid_export(export: subprocess.Popen, folder: Path) -> None:
    """Freeze ``export`` (SIGSTOP) while it is certainly exporting: its staging folder holds
    the float32 model, and no finished export exists. A signal sent next lands mid-export
    however fast the machine, once the process is continued (or at once, for SIGKILL)."""
    deadline = time.monotonic() + 120
    while not list(folder.glob(".*.staging-*/float32")):
        assert export.poll() is None, export.stdout.read()
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.01)
    export.send_signal(signal.SIGSTOP)
    assert list(folder.glob(".*.staging-*/float32")), "stopped while exporting"
    assert not list(folder.glob(f"*/{quantized.MODEL_FILE}")), "and before it finished"


def test_an_export_interrupted_or_killed_blocks_nothing_and_two_at_once_export_once(tmp_path):
    """Ctrl-C mid-export leaves no half model; SIGKILL mid-export leaves remains that block
    nothing: of the next two builds, started at once, one exports (and clears the remains)
    while the other waits and loads what it made."""
    folder = tmp_path / "models"
    interrupted = export_in_a_subprocess(folder)
    stop_mid_export(interrupted, folder)
    interrupted.send_signal(signal.SIGINT)
    interrupted.send_signal(signal.SIGCONT)
    output = interrupted.communicate(timeout=120)[0]
    assert interrupted.returncode != 0 and "KeyboardInterrupt" in output
    assert list(folder.iterdir()) == [next(folder.glob(".*.lock"))], "only the (free) lock file"

    victim = export_in_a_subprocess(folder)
    stop_mid_export(victim, folder)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert list(folder.glob(".*.staging-*")), "killed while exporting, as intended"

    first, second = export_in_a_subprocess(folder), export_in_a_subprocess(folder)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    assert sum(output.count("exporting minilm") for output in outputs) == 1, outputs
    (exported,) = {Path(output.strip().splitlines()[-1]) for output in outputs}
    assert exported.exists() and exported.parent.parent == folder
    assert not list(folder.glob(".*.staging-*")), "the killed export's remains are cleared"
    assert [path.name for path in folder.iterdir() if not path.name.startswith(".")] == [
        exported.parent.name
    ]


def test_a_damaged_export_is_made_again_and_gives_the_same_vectors(
    sample_texts, exported_models, tmp_path, caplog
):
    texts = sample_texts[:24]
    intact, _ = embed(texts, local_settings("onnx-int8", exported_models), tmp_path / "a.duckdb")
    folder = tmp_path / "models"
    shutil.copytree(exported_models, folder)
    (onnx_file,) = folder.glob(f"*/{quantized.MODEL_FILE}")
    onnx_file.write_bytes(b"not a model")  # as a disk or an editor might leave it

    with caplog.at_level(logging.INFO):
        again, stats = embed(texts, local_settings("onnx-int8", folder), tmp_path / "b.duckdb")
    assert stats.computed == len(texts)
    assert "cannot be loaded" in caplog.text and "exporting again" in caplog.text
    assert np.allclose(again, intact, atol=1e-6), "the new export is the same model"
    assert len(onnx_file.read_bytes()) > 1000


def test_the_int8_runtime_without_its_extra_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    settings = local_settings("onnx-int8", tmp_path)
    with pytest.raises(EmbeddingConfigError, match=r"pip install 'qwen_assets\[local,onnx\]'"):
        embed(["a text"], settings, tmp_path / "c.duckdb")


# -- batching by tokens, running out of memory, choosing the runtime ----------------------


def test_batches_hold_every_text_once_longest_first_within_the_budget():
    lengths = [5, 300, 40, 40, 7, 1200, 90, 3, 64, 64]
    for budget in (100, 1000, 5000):
        batches = token_batches(lengths, budget, max_texts=3)
        flat = [index for batch in batches for index in batch]
        assert sorted(flat) == list(range(len(lengths)))
        assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
        for batch in batches:
            assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= budget
            assert len(batch) <= 3


def test_the_vectors_are_the_same_however_the_texts_are_batched(sample_texts, tmp_path):
    texts = sample_texts[:200]  # more tokens than the CPU's "auto" budget holds in one pass
    vectors = {}
    for budget in (256, "auto", 1_000_000):
        settings = local_settings(batch_tokens=budget)
        vectors[budget], stats = embed(texts, settings, tmp_path / f"{budget}.duckdb")
        assert stats.computed == len(set(texts))
    passes = {
        budget: build_backend("local", local_settings(batch_tokens=budget), None, LOG).batches(
            texts, TOPIC_PREFIX, 32
        )
        for budget in vectors
    }
    assert len(passes[256]) > len(passes["auto"]) > len(passes[1_000_000]) >= 1
    for budget, found in vectors.items():
        cosine = (found * vectors["auto"]).sum(axis=1)
        assert cosine.min() >= 0.9999, budget


class RunsOutOfMemory:
    """The model's encoder, raising CUDA's out-of-memory error for a pass over more texts
    than ``fits`` (this machine has no GPU to run out of)."""

    def __init__(self, encode, fits: int) -> None:
        self.encode, self.fits, self.passes = encode, fits, []

    def __call__(self, texts, prefix):
        self.passes.append(len(texts))
        if len(texts) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.encode(texts, prefix)


def test_a_pass_that_runs_out_of_memory_is_split_and_loses_no_vector(
    sample_texts, tmp_path, caplog
):
    texts = sample_texts[:120]
    settings = local_settings(batch_tokens=100_000)
    expected, _ = embed(texts, settings, tmp_path / "whole.duckdb")

    backend = build_backend("local", settings, None, LOG)
    model, encode = backend._load()
    failing = RunsOutOfMemory(encode, fits=25)
    backend._loaded = (model, failing)
    with caplog.at_level(logging.INFO):
        vectors, stats = embed_texts(
            texts, TOPIC_PREFIX, settings, backend, str(tmp_path / "split.duckdb"), LOG
        )
    assert stats.computed == len(set(texts)) and stats.retries >= 1
    assert max(failing.passes) > 25, "the first pass was too large, as intended"
    assert (vectors * expected).sum(axis=1).min() >= 0.9999, "every vector, the same numbers"
    cached = read_table(str(tmp_path / "split.duckdb"), f"SELECT count(*) FROM {TABLE}")
    assert cached.iloc[0, 0] == len(set(texts))
    assert "ran out of memory on cpu: split in two" in caplog.text
    # After the first failure the budget shrank: not one failure per batch.
    assert sum(size > 25 for size in failing.passes) <= 3


def test_a_single_text_that_cannot_fit_says_what_to_change(sample_texts, tmp_path):
    settings = local_settings()
    backend = build_backend("local", settings, None, LOG)
    model, encode = backend._load()
    backend._loaded = (model, RunsOutOfMemory(encode, fits=0))
    with pytest.raises(
        EmbeddingError,
        match=r"does not fit in the memory of cpu; set embedding\.local\.max_seq_length lower",
    ):
        embed_texts(sample_texts[:3], "", settings, backend, str(tmp_path / "c.duckdb"), LOG)


@pytest.mark.parametrize(
    ("requested", "device", "flags", "runs", "warns"),
    [
        ("auto", "cpu", {"avx2", "avx512f", "avx512_vnni"}, "onnx-int8", False),
        ("auto", "cpu", {"avx2", "amx_int8"}, "onnx-int8", False),
        ("auto", "cpu", {"avx2"}, "torch", False),
        ("auto", "cuda", {"avx512_vnni"}, "torch", False),
        ("onnx-int8", "cpu", {"avx2"}, "onnx-int8", True),
        ("onnx-int8", "cpu", {"avx_vnni"}, "onnx-int8", False),
        ("torch", "cpu", {"avx512_vnni"}, "torch", False),
    ],
)
def test_the_runtime_follows_the_cpus_int8_instructions(requested, device, flags, runs, warns):
    chosen = resolve_runtime(requested, device, frozenset(flags))
    assert chosen.name == runs
    assert (chosen.warning is not None) == warns
    if requested == "auto":
        assert chosen.reason.startswith("auto: ")


def test_int8_on_a_cpu_without_int8_instructions_is_one_warning_at_the_start(
    monkeypatch, exported_models, tmp_path, caplog
):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    settings = local_settings("onnx-int8", exported_models)
    with caplog.at_level(logging.INFO):
        embed(["one text", "another"], settings, tmp_path / "c.duckdb")
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == LOG.name and "int8 dot-product" in record.getMessage()
    ]
    assert len(warnings) == 1, "one line in the run's log (and one on the command line)"
    assert "measured slower than float32" in warnings[0]


@pytest.mark.parametrize(("cpu_has", "picked"), [(("avx512_vnni",), "onnx-int8"), ((), "torch")])
def test_runtime_auto_versions_the_vectors_as_the_runtime_it_picks(monkeypatch, cpu_has, picked):
    """On a CPU with int8 dot products "auto" is the int8 runtime, elsewhere the model's own
    weights; either way its vectors are versioned as that runtime's."""

    def versions(**local):
        raw = settings_dict(embedding={"backend": "local", "local": {"device": "cpu", **local}})
        settings = parse_settings(raw)
        return [task_version(settings, task) for task in settings.task_names]

    monkeypatch.setattr(hardware, "int8_dot_products", lambda flags=None: list(cpu_has))
    assert versions(runtime="auto") == versions(runtime=picked)
    assert versions(runtime="auto") != versions(
        runtime="torch" if picked == "onnx-int8" else "onnx-int8"
    )
