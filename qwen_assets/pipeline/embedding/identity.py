"""What a vector is, as the cache and the stale rule name it: the prompt its text was given,
the model name it is cached under, and the version of each task's vectors.

Here rather than on the settings models: resolving runtime "auto" looks for a GPU, which is
the embedding code's business, and the settings stay plain validated data.
"""

from __future__ import annotations

from typing import Any

from qwen_assets.settings import EmbeddingSettings, LocalSettings, Settings, fingerprint


def runtime_here(local: LocalSettings) -> str:
    """The runtime that runs on this machine: ``runtime``, with "auto" resolved (which looks
    for a GPU, and so imports torch)."""
    if local.runtime != "auto":
        return local.runtime
    from qwen_assets.pipeline.embedding.hardware import pick_device, resolve_runtime

    device = "cpu" if local.device == "cpu" else pick_device(local.device)
    return resolve_runtime("auto", device).name


def vector_runtime(embedding: EmbeddingSettings) -> str | None:
    """The local runtime when it gives other numbers than the model's own weights (None
    otherwise). With backend "auto" the local backend may run, so it counts there too."""
    if embedding.backend == "http" or embedding.local.runtime == "torch":
        return None
    runtime = runtime_here(embedding.local)
    return None if runtime == "torch" else runtime


def cache_model(embedding: EmbeddingSettings, backend: str) -> str:
    """The name ``backend``'s vectors are cached under: the model, marked with the local
    runtime when that runtime changes the numbers, so two precisions never mix."""
    runtime = vector_runtime(embedding) if backend == "local" else None
    return f"{embedding.model} ({runtime})" if runtime else embedding.model


def prompt_prefix(settings: Settings, task: str, variant: str | None = None) -> str:
    """What goes before each text for ``task``: nothing when the task has no instruction."""
    instruction = settings.instruction_of(task)
    if not instruction:
        return ""
    template = settings.embedding_of(variant).prompt_template
    return template.removesuffix("{text}").replace("{instruction}", instruction)


def task_version(settings: Settings, task: str, variant: str | None = None) -> str:
    """Changes exactly when the vectors of ``task`` (embedded as ``variant`` embeds) would."""
    embedding = settings.embedding_of(variant)
    version: dict[str, Any] = {
        "instruction": settings.instruction_of(task),
        "template": embedding.prompt_template,
        "model": embedding.model,
        "dimensions": embedding.dimensions,
    }
    runtime = vector_runtime(embedding)
    if runtime:  # absent for torch: older versions stand
        version["runtime"] = runtime
    return fingerprint(version)
