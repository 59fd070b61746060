"""What the in-process model costs on this CPU: Qwen3-Embedding-0.6B's architecture.

The weights are not on this machine, and their values do not change the cost: the model is
transformers' ``Qwen3Model`` built from the published configuration of Qwen3-Embedding-0.6B
(28 layers, hidden 1024, 16 query / 8 key-value heads) with random weights, wrapped as a
sentence-transformers model (last-token pooling, normalised, as Qwen3-Embedding is) and saved
once under the benchmarks' work folder. Its tokenizer is all-MiniLM-L6-v2's (Qwen's is not
here either): a word costs about as many tokens in both. The texts are the sample's own,
embedded through the project's local backend and embedding code (``embed_texts`` with a
fresh cache), so what is measured is what ``qwen-assets build`` would pay.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

from benchmarks.incremental import PROJECT as INCREMENTAL_PROJECT
from benchmarks.results import table, write_section
from benchmarks.workspace import work_dir
from qwen_assets.testing import minilm_path

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
TEXTS = 32  # a random sample of the sample's texts, measured once each
TASK_PROMPT = "Instruct: Identify the topic or theme of the given text\nQuery:"


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


def run() -> str:
    import torch
    from transformers import AutoTokenizer

    from qwen_assets.embedding import embed_texts
    from qwen_assets.embedding.local import LocalBackend, load_model
    from qwen_assets.settings import parse_settings
    from qwen_assets.testing import settings_dict

    folder = random_qwen3_model()
    texts = sample_texts()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens = [len(tokenizer(TASK_PROMPT + text)["input_ids"]) for text in texts]
    measured = random.Random(42).sample(range(len(texts)), TEXTS)
    settings = parse_settings(
        settings_dict(
            embedding={
                "model": "qwen3-embedding-0.6b-random",
                "backend": "local",
                "local": {"model": str(folder), "device": "cpu"},
            }
        )
    ).embedding
    log = logging.getLogger("benchmarks.local_cpu")
    cache = work_dir() / "local-cpu-cache.duckdb"
    cache.unlink(missing_ok=True)  # every run measures the model, not the cache
    backend = LocalBackend(settings.local, settings.model, None, log)
    load_model(str(folder), backend.device, None)  # loaded once per build: not in the rate
    started = time.monotonic()
    embed_texts([texts[i] for i in measured], TASK_PROMPT, settings, backend, str(cache), log)
    seconds = time.monotonic() - started
    cache.unlink(missing_ok=True)
    measured_tokens = sum(tokens[i] for i in measured)
    tokens_per_second = measured_tokens / seconds
    build_tokens = 4 * sum(tokens)  # the default build: 4 tasks x the sample
    hours = build_tokens / tokens_per_second / 3600
    rows = [
        [
            "torch, float32",
            f"{torch.get_num_threads()}",
            f"{measured_tokens:,} in {TEXTS} texts",
            f"{tokens_per_second:.0f}",
            f"{TEXTS / seconds:.2f}",
            f"{build_tokens:,}",
            f"{hours:.1f} h",
        ]
    ]
    body = (
        "The in-process backend on this machine's CPU, with Qwen3-Embedding-0.6B's architecture "
        "(random weights, see `benchmarks/local_cpu.py`), through the project's local backend "
        f"on {TEXTS} of the sample's texts (chosen at random, with the topic task's prompt, "
        "in the backend's batches of `embedding.local.batch_size`; the model is loaded before "
        "the clock starts, as a build loads it once). The projection is the whole default "
        "build: 4 tasks x 800 posts, at the measured tokens/s. It is an upper bound: the "
        f"{TEXTS} texts make batches of mixed lengths, padded to their longest, where the "
        "build's 200 batches of similar lengths pad less.\n\n"
        + table(
            [
                "runtime",
                "threads",
                "measured",
                "tokens/s",
                "texts/s",
                "default build tokens",
                "default build, projected",
            ],
            rows,
        )
    )
    write_section("local-cpu", "The in-process model on a CPU", body)
    return body


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(run())
