"""What the in-process model costs on this CPU: Qwen3-Embedding-0.6B's architecture.

The model is ``benchmarks/local_model.py``'s (random weights, the published architecture).
The texts are the sample's own, cut into the batches a build runs (the local backend's token
budget) and embedded through the project's local backend and embedding code (``embed_texts``
with a fresh cache), so what is measured is what ``qwen-assets build`` would pay, once per
runtime (``embedding.local.runtime``). The result names the CPU and the instructions that
decide the int8 runtime's speed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.local_model import (
    MODEL_NAME,
    local_settings,
    random_qwen3_model,
    sample_texts,
    task_prompts,
)
from benchmarks.results import table, write_section
from benchmarks.workspace import work_dir
from qwen_assets.pipeline.embedding import build_backend
from qwen_assets.pipeline.embedding.core import Batch
from qwen_assets.pipeline.embedding.hardware import cpu_summary
from qwen_assets.pipeline.metrics import Agreement, agreement
from qwen_assets.testing import minilm_path

TASK_PROMPT = task_prompts()["topic"]
TASKS = len(task_prompts())  # the default build embeds the sample once per task
# Which of the build's batches are timed, as quantiles of their length (longest first): the
# cost per token grows with length (attention), so one length would mislead.
MEASURED_QUANTILES = (0.1, 0.5, 0.9)
RUNTIMES = ("torch", "onnx-int8")


def build_batches(folder: str, texts: list[str]) -> list[Batch]:
    """The batches a build runs the texts in on the CPU (longest first, by token budget)."""
    log = logging.getLogger("benchmarks.local_cpu")
    backend = build_backend("local", local_settings(MODEL_NAME, folder, device="cpu"), None, log)
    return backend.batches(texts, TASK_PROMPT, batch_size=0)


@dataclass
class Measured:
    runtime: str
    timed: list[Batch]
    seconds: list[float]
    setup_seconds: float  # loading the model, and for onnx-int8 a first export

    @property
    def tokens(self) -> int:  # real (unpadded) tokens in the timed batches
        return sum(sum(batch.tokens) for batch in self.timed)

    @property
    def texts(self) -> int:
        return sum(len(batch.texts) for batch in self.timed)

    def projected_hours(self, batches: list[Batch]) -> float:
        """Every batch of the default build at the cost per padded token measured at the
        nearest lengths (interpolated), times the tasks."""
        lengths = np.array([max(batch.tokens) for batch in self.timed])
        per_token = np.array(
            [s / batch.padded_tokens for s, batch in zip(self.seconds, self.timed, strict=True)]
        )
        order = np.argsort(lengths)
        seconds = sum(
            batch.padded_tokens * np.interp(max(batch.tokens), lengths[order], per_token[order])
            for batch in batches
        )
        return TASKS * seconds / 3600


def measure(runtime: str, folder: str, timed: list[Batch]) -> tuple[list[float], float]:
    from qwen_assets.pipeline.embedding import embed_texts

    log = logging.getLogger("benchmarks.local_cpu")
    settings = local_settings(MODEL_NAME, folder, device="cpu", runtime=runtime)
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
        embed_texts(list(batch.texts), TASK_PROMPT, settings, backend, str(cache), log)
        seconds.append(time.monotonic() - started)
    cache.unlink(missing_ok=True)
    return seconds, setup


def minilm_agreement(texts: list[str]) -> Agreement:
    """The int8 runtime against float32 on a real model: the sample, the topic prompt."""
    from qwen_assets.pipeline.embedding import build_backend, embed_texts
    from qwen_assets.testing import TEST_MAX_SEQ_LENGTH

    log = logging.getLogger("benchmarks.local_cpu")
    vectors = []
    for runtime in RUNTIMES:
        settings = local_settings(
            minilm_path(),
            minilm_path(),
            device="cpu",
            runtime=runtime,
            max_seq_length=TEST_MAX_SEQ_LENGTH,
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

    folder = str(random_qwen3_model())
    texts = sample_texts()
    batches = build_batches(folder, texts)
    timed = [batches[int(q * (len(batches) - 1))] for q in MEASURED_QUANTILES]
    results = []
    for runtime in RUNTIMES:
        seconds, setup = measure(runtime, folder, timed)
        results.append(Measured(runtime, timed, seconds, setup))
    base = results[0]
    rows = []
    for result in results:
        spent = sum(result.seconds)
        hours = result.projected_hours(batches)
        rows.append(
            [
                result.runtime,
                ", ".join(
                    f"{sum(batch.tokens) / s:.0f} at {max(batch.tokens)}"
                    for batch, s in zip(result.timed, result.seconds, strict=True)
                ),
                f"{result.tokens / spent:.0f}",
                f"{result.texts / spent:.2f}",
                f"{hours:.1f} h",
                f"{base.projected_hours(batches) / hours:.2f}x",
                f"{result.setup_seconds:.0f} s",
            ]
        )
    agreed = minilm_agreement(texts)
    tokens = sum(sum(batch.tokens) for batch in batches)
    body = (
        f"The in-process backend on this machine's CPU ({cpu_summary()}; "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, ONNX Runtime "
        f"{onnxruntime.__version__}), with Qwen3-Embedding-0.6B's architecture (random "
        "weights, see `benchmarks/local_model.py`), through the project's own local backend and "
        "`embed_texts`, per `embedding.local.runtime`. Timed: three of the batches a build runs "
        f"(longest first, at most {batches[0].padded_tokens:,} padded tokens each, "
        f"{len(batches)} batches per task), at the "
        f"{', '.join(f'{q:.0%}' for q in MEASURED_QUANTILES)} points of the build's order, "
        "with the topic task's prompt. The projection runs every batch of the default build "
        f"({TASKS} tasks x {len(texts)} posts, {TASKS * tokens:,} tokens) at the cost per padded "
        "token measured at the nearest lengths. Setup is loading the model, and for onnx-int8 "
        "its export (paid once; later builds load the export in seconds).\n\n"
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
        "asserts >= 0.99 and >= 0.9.\n\n"
        "The int8 runtime's gain depends on the CPU: at an earlier commit (batches of 16 "
        "texts), another 2-core AMD EPYC with AVX2 but no int8 dot-product instructions (no "
        "VNNI, no AVX-512) measured torch at 71 tokens/s and onnx-int8 at 64 (0.86x). "
        '`runtime = "auto"` picks int8 only on CPUs with such instructions.'
    )
    write_section("local-cpu", "The in-process model on a CPU", body)
    return body


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(run())
