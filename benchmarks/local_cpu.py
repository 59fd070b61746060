"""What the in-process model costs on this CPU: Qwen3-Embedding-0.6B's architecture.

The weights are not on this machine, and their values do not change the cost: the model is
transformers' ``Qwen3Model`` built from the published configuration of Qwen3-Embedding-0.6B
(28 layers, hidden 1024, 16 query / 8 key-value heads) with random weights, wrapped as a
sentence-transformers model (last-token pooling, normalised, as Qwen3-Embedding is) and saved
once under the benchmarks' work folder. Its tokenizer is all-MiniLM-L6-v2's (Qwen's is not
here either): a word costs about as many tokens in both. The texts are the sample's own,
embedded through the project's local backend and embedding code (``embed_texts`` with a
fresh cache), so what is measured is what ``qwen-assets build`` would pay, once per
runtime (``embedding.local.runtime``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.incremental import PROJECT as INCREMENTAL_PROJECT
from benchmarks.results import table, write_section
from benchmarks.workspace import work_dir
from qwen_assets.embedding.core import make_batches
from qwen_assets.metrics import Agreement, agreement
from qwen_assets.settings import EmbeddingSettings, parse_settings
from qwen_assets.testing import minilm_path, settings_dict

# Qwen/Qwen3-Embedding-0.6B's config.json, as published.
QWEN3_EMBEDDING_06B = {
    "vocab_size": 151669,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
}
MAX_TOKENS = 8192
TASK_PROMPT = "Instruct: Identify the topic or theme of the given text\nQuery:"
TASKS = 4  # the default build embeds the sample once per task
# Which of the build's batches are timed, as quantiles of their length (longest first): the
# cost per token grows with length (attention), so one length would mislead.
MEASURED_QUANTILES = (0.1, 0.5, 0.9)
RUNTIMES = ("torch", "onnx-int8")


def random_qwen3_model() -> Path:
    """The random-weight model as a sentence-transformers folder, built on first use."""
    folder = work_dir() / "qwen3-embedding-0.6b-random"
    if (folder / "modules.json").exists():
        return folder
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    raw = folder.with_name(folder.name + "-transformer")
    Qwen3Model(Qwen3Config(**QWEN3_EMBEDDING_06B)).save_pretrained(raw)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = MAX_TOKENS
    tokenizer.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=MAX_TOKENS)
    pooling = models.Pooling(1024, pooling_mode="lasttoken")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()]).save(str(folder))
    return folder


def sample_texts() -> list[str]:
    from qwen_assets.storage import read_table

    database = work_dir() / INCREMENTAL_PROJECT / "warehouse.duckdb"
    if not database.exists():
        raise SystemExit("no sample: run `python -m benchmarks.run incremental` first")
    frame = read_table(str(database), "SELECT text FROM newsgroups_sample ORDER BY position")
    return frame["text"].tolist()


def local_settings(model: str, folder: str, runtime: str) -> EmbeddingSettings:
    return parse_settings(
        settings_dict(
            embedding={
                "model": model,
                "backend": "local",
                "local": {
                    "model": folder,
                    "device": "cpu",
                    "runtime": runtime,
                    "exported_models": str(work_dir() / "models"),
                },
            }
        )
    ).embedding


def build_batches(texts: list[str], size: int) -> list[list[int]]:
    """The texts' positions in the batches a build runs them in: longest first, ``size`` at a
    time (``make_batches``, then the local backend's ``batch_size``)."""
    order = [index for batch in make_batches(texts, size) for index in batch.indices]
    return [order[start : start + size] for start in range(0, len(order), size)]


@dataclass
class Measured:
    runtime: str
    padded_lengths: list[int]  # per timed batch: its longest text, in tokens
    sizes: list[int]  # per timed batch: texts
    seconds: list[float]
    tokens: int  # real (unpadded) tokens in the timed batches
    texts: int
    setup_seconds: float  # loading the model, and for onnx-int8 a first export

    def projected_hours(self, batches: list[list[int]], tokens: list[int]) -> float:
        """Every batch of the default build at the cost per padded token measured at the
        nearest lengths (interpolated), times the tasks."""
        order = np.argsort(self.padded_lengths)
        lengths = np.array(self.padded_lengths)[order]
        seconds_per_token = np.array(
            [
                s / (size * n)
                for s, size, n in zip(self.seconds, self.sizes, self.padded_lengths, strict=True)
            ]
        )[order]
        seconds = sum(
            len(batch)
            * max(tokens[i] for i in batch)
            * np.interp(max(tokens[i] for i in batch), lengths, seconds_per_token)
            for batch in batches
        )
        return TASKS * seconds / 3600


def measure(runtime: str, model: str, folder: str, texts: list[str], timed: list[list[int]]):
    from qwen_assets.embedding import build_backend, embed_texts

    log = logging.getLogger("benchmarks.local_cpu")
    settings = local_settings(model, folder, runtime)
    backend = build_backend("local", settings, None, log)
    cache = work_dir() / "local-cpu-cache.duckdb"
    cache.unlink(missing_ok=True)
    started = time.monotonic()  # the model is loaded (and exported) once per build: apart
    embed_texts(
        ["warm up", "a second warm-up text"], TASK_PROMPT, settings, backend, str(cache), log
    )
    setup = time.monotonic() - started
    seconds = []
    for batch in timed:
        started = time.monotonic()
        embed_texts([texts[i] for i in batch], TASK_PROMPT, settings, backend, str(cache), log)
        seconds.append(time.monotonic() - started)
    cache.unlink(missing_ok=True)
    return seconds, setup


def minilm_agreement(texts: list[str]) -> Agreement:
    """The int8 runtime against float32 on a real model: the sample, the topic prompt."""
    from qwen_assets.embedding import build_backend, embed_texts
    from qwen_assets.testing import TEST_MAX_SEQ_LENGTH

    log = logging.getLogger("benchmarks.local_cpu")
    vectors = []
    for runtime in RUNTIMES:
        settings = local_settings(minilm_path(), minilm_path(), runtime)
        settings = settings.model_copy(
            update={
                "local": settings.local.model_copy(update={"max_seq_length": TEST_MAX_SEQ_LENGTH})
            }
        )
        cache = work_dir() / "local-cpu-agreement.duckdb"
        cache.unlink(missing_ok=True)
        backend = build_backend("local", settings, None, log)
        vectors.append(embed_texts(texts, TASK_PROMPT, settings, backend, str(cache), log)[0])
        cache.unlink(missing_ok=True)
    return agreement(*vectors, k=10)


def run() -> str:
    import onnxruntime
    import torch
    from transformers import AutoTokenizer

    folder = random_qwen3_model()
    texts = sample_texts()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens = [len(tokenizer(TASK_PROMPT + text)["input_ids"]) for text in texts]
    batch_size = local_settings("m", str(folder), "torch").local.batch_size
    batches = build_batches(texts, batch_size)
    timed = [batches[int(q * (len(batches) - 1))] for q in MEASURED_QUANTILES]
    results = []
    for runtime in RUNTIMES:
        seconds, setup = measure(runtime, "qwen3-embedding-0.6b-random", str(folder), texts, timed)
        results.append(
            Measured(
                runtime,
                [max(tokens[i] for i in batch) for batch in timed],
                [len(batch) for batch in timed],
                seconds,
                sum(tokens[i] for batch in timed for i in batch),
                sum(len(batch) for batch in timed),
                setup,
            )
        )
    base = results[0]
    rows = []
    for result in results:
        spent = sum(result.seconds)
        hours = result.projected_hours(batches, tokens)
        rows.append(
            [
                result.runtime,
                ", ".join(
                    f"{n / s:.0f} at {length}"
                    for n, s, length in zip(
                        [sum(tokens[i] for i in b) for b in timed],
                        result.seconds,
                        result.padded_lengths,
                        strict=True,
                    )
                ),
                f"{result.tokens / spent:.0f}",
                f"{result.texts / spent:.2f}",
                f"{hours:.1f} h",
                f"{base.projected_hours(batches, tokens) / hours:.2f}x",
                f"{result.setup_seconds:.0f} s",
            ]
        )
    agreed = minilm_agreement(texts)
    body = (
        "The in-process backend on this machine's CPU ("
        + cpu_name()
        + f", {torch.get_num_threads()} "
        f"torch threads; torch {torch.__version__}, ONNX Runtime {onnxruntime.__version__}), "
        "with Qwen3-Embedding-0.6B's architecture (random weights, see "
        "`benchmarks/local_cpu.py`), through the project's own local backend and "
        "`embed_texts`, per `embedding.local.runtime`. Timed: three of the batches a build "
        f"runs ({batch_size} texts each, longest first), at the {', '.join(f'{q:.0%}' for q in MEASURED_QUANTILES)} "
        "points of the build's order, with the topic task's prompt. The projection runs every "
        f"batch of the default build ({TASKS} tasks x {len(texts)} posts, {TASKS * sum(tokens):,} "
        "tokens) at the cost per padded token measured at the nearest lengths. Setup is loading "
        "the model, and for onnx-int8 its export (paid once; later builds load the export in "
        "seconds).\n\n"
        + table(
            [
                "runtime",
                "tokens/s per timed batch (at its longest text, tokens)",
                "tokens/s",
                "texts/s",
                "default build, projected",
                "speed-up",
                "setup",
            ],
            rows,
        )
        + "\n\nAgreement of onnx-int8 with torch float32 on a real model (all-MiniLM-L6-v2, "
        f"the {len(texts)} sample texts, topic prompt, 128 tokens): per-text cosine "
        f"min {agreed.min_cosine:.4f} / mean {agreed.mean_cosine:.4f}, top-10 neighbour "
        f"sets shared {agreed.neighbour_jaccard:.3f} on average (Jaccard). The test suite "
        "asserts >= 0.99 and >= 0.9."
    )
    write_section("local-cpu", "The in-process model on a CPU", body)
    return body


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU unknown"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(run())
