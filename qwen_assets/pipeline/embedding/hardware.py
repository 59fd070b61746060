"""What the machine offers the in-process model: its device, number format, batch budget, and
whether the CPU has the instructions that make int8 faster than float32.

The int8 runtime (``quantized.py``) multiplies 8-bit numbers. CPUs with int8 dot-product
instructions (x86's AVX-512 VNNI, AVX-VNNI or AMX; Arm's dot-product extension) do that in one
step, and there it measured 1.8x float32's speed; on an AVX2-only CPU the same model ran at
0.86x (``benchmarks/RESULTS.md``). So ``runtime = "auto"`` picks int8 only where they exist.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flags (x86) and features (Arm) that give int8 dot products, as people name them.
INT8_DOT_PRODUCTS = {
    "amx_int8": "AMX-INT8",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "asimddp": "Arm dot product",
}
# Other flags worth naming in benchmark results.
VECTOR_UNITS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16"}

# Padded tokens per forward pass. A CPU gains nothing from more than a few thousand (and
# pays for the memory); a GPU wants tens of thousands to be busy, within its free memory.
CPU_BATCH_TOKENS = 8_192
GPU_BATCH_TOKENS = 65_536
MIN_BATCH_TOKENS = 1_024
# Activation memory per token of a forward pass, in multiples of (hidden size x bytes per
# number): the hidden states, attention and the MLP's wider intermediate, with room to spare.
ACTIVATION_FACTOR = 48


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def int8_dot_products(flags: frozenset[str] | None = None) -> list[str]:
    """The int8 dot-product instructions the CPU has, by name (empty: none found)."""
    flags = cpu_flags() if flags is None else flags
    return [name for flag, name in INT8_DOT_PRODUCTS.items() if flag in flags]


def cpu_summary(flags: frozenset[str] | None = None) -> str:
    """The CPU's name and the instructions that decide the local model's speed, for benchmark
    results: "AMD EPYC (x86_64): AVX2, AVX-512, AVX-512 VNNI; torch capability AVX512"."""
    flags = cpu_flags() if flags is None else flags
    units = [name for flag, name in VECTOR_UNITS.items() if flag in flags]
    units += int8_dot_products(flags) or ["no int8 dot-product instructions"]
    summary = f"{cpu_name()} ({platform.machine()}): {', '.join(units)}"
    try:
        import torch

        summary += f"; torch capability {torch.backends.cpu.get_cpu_capability()}"
    except ImportError:
        pass
    return summary


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


@lru_cache(maxsize=8)
def pick_device(requested: str) -> str:
    """``requested``, or for "auto" CUDA, then Apple MPS, then the CPU."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class Runtime:
    name: str  # "torch" or "onnx-int8"
    reason: str  # why, in a few words, for the build's first line
    warning: str | None = None  # an explicit choice that will be slow here


def resolve_runtime(requested: str, device: str, flags: frozenset[str] | None = None) -> Runtime:
    """The runtime that runs: ``requested``, or for "auto" int8 on a CPU with int8 dot
    products and the model's own weights everywhere else."""
    found = int8_dot_products(flags)
    if requested == "torch":
        return Runtime("torch", "as set")
    if requested == "onnx-int8":
        warning = None
        if not found:
            warning = (
                'embedding.local.runtime = "onnx-int8" on a CPU without int8 dot-product '
                "instructions (VNNI, AMX): measured slower than float32 on such a CPU; "
                'runtime = "torch" or "auto" is faster here'
            )
        return Runtime("onnx-int8", "as set", warning)
    if device != "cpu":
        return Runtime("torch", f"auto: int8 is for CPUs, this runs on {device}")
    if found:
        return Runtime("onnx-int8", f"auto: this CPU has {found[0]}")
    return Runtime("torch", "auto: this CPU has no int8 dot-product instructions")


def number_format(device: str) -> str:
    """bfloat16 on a GPU that has it (float16 on one that does not), float32 elsewhere."""
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def batch_tokens(device: str, hidden_size: int, bytes_per_number: int) -> int:
    """Padded tokens per forward pass when ``embedding.local.batch_tokens`` is "auto": a few
    thousand on a CPU, on a GPU as many as half its free memory holds, up to a bound."""
    if not device.startswith("cuda"):
        return CPU_BATCH_TOKENS
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_token = hidden_size * bytes_per_number * ACTIVATION_FACTOR
    return max(MIN_BATCH_TOKENS, min(GPU_BATCH_TOKENS, free // 2 // per_token))
