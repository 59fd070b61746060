"""What the in-process model does on a GPU: Qwen3-Embedding-0.6B's architecture (random
weights, ``benchmarks/local_model.py``) embedding the sample's four tasks through the
project's own local backend and ``embed_texts``, as ``qwen-assets build`` would.

Beside it, on the same card: sentence-transformers' own ``encode`` over one task's texts at
64 texts a batch (what a hand-written script would do), and the bare forward pass of the
transformer on 64 x 512 tokens, the ceiling. On a machine without a CUDA GPU it says so and
measures nothing.
"""

from __future__ import annotations

import logging
import time

from benchmarks.local_model import (
    MODEL_NAME,
    local_settings,
    random_qwen3_model,
    sample_texts,
    task_prompts,
)
from benchmarks.results import table, write_section
from benchmarks.workspace import work_dir

CEILING_SHAPE = (64, 512)
SWEEP = (32_768, 131_072)  # batch budgets tried besides the automatic one
REPEATS = 2  # the automatic budget is timed this often; the faster run is reported
log = logging.getLogger("benchmarks.local_gpu")


def embed_tasks(folder: str, texts: list[str], **local: object) -> dict:
    """Every task's texts through the project's local backend, each into a fresh cache."""
    import torch

    from qwen_assets.pipeline.embedding import build_backend, embed_texts

    settings = local_settings(MODEL_NAME, folder, device="cuda", **local)
    backend = build_backend("local", settings, None, log)
    cache = work_dir() / "local-gpu-cache.duckdb"
    seconds, tokens = 0.0, 0
    for prompt in task_prompts().values():
        cache.unlink(missing_ok=True)
        torch.cuda.synchronize()
        started = time.monotonic()
        _, stats = embed_texts(texts, prompt, settings, backend, str(cache), log)
        torch.cuda.synchronize()
        seconds += time.monotonic() - started
        tokens += stats.tokens
    cache.unlink(missing_ok=True)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "passes": backend.requests,
        "budget": backend.budget,
        "format": backend.number_format,
    }


def sentence_transformers_encode(folder: str, texts: list[str]) -> float:
    """Seconds for sentence-transformers' own encode of one task's texts, 64 at a time."""
    import torch

    from qwen_assets.pipeline.embedding.local import load_model

    model = load_model(folder, "cuda", None, "bfloat16")
    prompt = task_prompts()["topic"]
    model.encode(texts[:64], prompt=prompt, batch_size=64)  # warm up
    torch.cuda.synchronize()
    started = time.monotonic()
    model.encode(texts, prompt=prompt, batch_size=64, normalize_embeddings=True)
    torch.cuda.synchronize()
    return time.monotonic() - started


def forward_ceiling(folder: str) -> float:
    """Tokens per second of the bare transformer on full batches of random token ids."""
    import torch

    from qwen_assets.pipeline.embedding.local import load_model

    transformer = load_model(folder, "cuda", None, "bfloat16")[0].auto_model
    size, length = CEILING_SHAPE
    ids = torch.randint(0, transformer.config.vocab_size, (size, length), device=transformer.device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: kernels chosen, memory allocated
            transformer(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        started = time.monotonic()
        runs = 10
        for _ in range(runs):
            transformer(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
    return runs * size * length / (time.monotonic() - started)


def run() -> str:
    import torch

    if not torch.cuda.is_available():
        return "local-gpu: no CUDA GPU on this machine; nothing measured (RESULTS.md unchanged)"
    started = time.monotonic()
    folder = str(random_qwen3_model())
    texts = sample_texts()
    setup = time.monotonic() - started
    warm = embed_tasks(folder, texts[:8])  # loads the model onto the card, once per build
    del warm
    ours = min((embed_tasks(folder, texts) for _ in range(REPEATS)), key=lambda r: r["seconds"])
    sweep = {budget: embed_tasks(folder, texts, batch_tokens=budget) for budget in SWEEP}
    plain = sentence_transformers_encode(folder, texts)
    ceiling = forward_ceiling(folder)
    tasks = len(task_prompts())

    def row(what: str, found: dict) -> list[object]:
        seconds = found["seconds"]
        return [
            what,
            f"{seconds:.1f}",
            f"{found['tokens'] / seconds:,.0f}",
            f"{tasks * len(texts) / seconds:.0f}",
            found["passes"],
        ]

    rows = [
        row(
            f"project's local backend, batch_tokens auto ({ours['budget']:,}), best of {REPEATS}",
            ours,
        )
    ]
    rows += [row(f"the same, batch_tokens {budget:,}", found) for budget, found in sweep.items()]
    per_task = ours["tokens"] / tasks
    rows.append(
        [
            "sentence-transformers' encode, 64 texts a batch (one task, x4)",
            f"{tasks * plain:.1f}",
            f"{per_task / plain:,.0f}",
            f"{len(texts) / plain:.0f}",
            "",
        ]
    )
    body = (
        f"{torch.cuda.get_device_name()} (torch {torch.__version__}); Qwen3-Embedding-0.6B's "
        f"architecture with random weights in {ours['format']}; the default build's {tasks} tasks x "
        f"{len(texts)} posts ({ours['tokens']:,} tokens), each task into a fresh cache, after "
        "loading the model once (a build loads it once per run). Tokens are real, unpadded "
        "tokens. The bare forward pass of the same transformer on "
        f"{CEILING_SHAPE[0]} x {CEILING_SHAPE[1]} tokens runs at **{ceiling:,.0f} tokens/s** on "
        f"this card: the ceiling. Making the random model took {setup:.0f} s "
        "(not counted).\n\n"
        + table(["what", "seconds, 4 tasks", "tokens/s", "texts/s", "forward passes"], rows)
    )
    write_section("local-gpu", "The in-process model on a GPU", body)
    return body


if __name__ == "__main__":
    print(run())
